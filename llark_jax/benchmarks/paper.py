"""The LLark paper's numbers for each benchmark (Table 2, §D.1, Table 6), put beside ours.

Values are (value, ± half-width of the 95% interval, or None where the paper gives none).
`ROWS` maps one of our systems to the paper's number for the same system; `OTHERS` are the
paper's systems we do not run (listed under the report's table for context).
"""

from __future__ import annotations

Number = tuple[float, float | None]

# benchmark -> (metric the paper reports, {our system: paper number}, {paper system: number})
PAPER: dict[str, tuple[str, dict[str, Number], dict[str, Number]]] = {
    "giantsteps-key": ("key_mirex",
                       {"model": (0.70, 0.04), "madmom": (0.729, None)},
                       {"Essentia (Table 2 baseline)": (0.32, 0.04),
                        "ImageBind-LLM": (0.048, 0.03), "LTU-AS": (0.00, 0.03),
                        "task fine-tuned SOTA": (0.743, 0.04)}),
    "giantsteps-tempo": ("tempo_acc2",
                         {"model": (0.86, 0.03), "madmom": (0.947, None)},
                         {"Essentia (Table 2 baseline)": (0.77, 0.03),
                          "ImageBind-LLM": (0.05, 0.03), "LTU-AS": (0.00, 0.03),
                          "task fine-tuned SOTA": (0.925, 0.02)}),
    "gtzan": ("genre_acc1",
              {"model": (0.56, 0.03), "majority": (0.10, 0.02)},
              {"ImageBind-LLM": (0.71, 0.03), "LTU-AS": (0.30, 0.03),
               "task fine-tuned SOTA": (0.835, 0.02)}),
    "medleydb-genre": ("genre_acc1",
                       {"model": (0.56, 0.12), "majority": (0.125, 0.08)},
                       {"ImageBind-LLM": (0.57, 0.12), "LTU-AS": (0.378, 0.11)}),
    "medleydb": ("instruments_clip_f1",
                 {"model": (0.31, 0.02), "majority": (0.25, 0.02)},
                 {"ImageBind-LLM": (0.25, 0.02), "LTU-AS": (0.24, 0.02)}),
    "musicnet": ("instruments_micro_f1",
                 {"model": (0.99, 0.02), "majority": (0.26, 0.02)},
                 {"ImageBind-LLM": (0.86, 0.02), "LTU-AS": (0.86, 0.06)}),
    "musiccaps": ("bleu4",  # Table 6, the standard captioning prompt
                  {"model": (0.01, None)},
                  {"LTU-AS": (0.09, None), "ImageBind-LLM": (0.11, None),
                   "LP-MusicCaps": (0.18, None)}),
}

# Table 6's other columns for MusicCaps (LLark, standard prompt).
MUSICCAPS_MODEL = {"bleu1": 0.02, "bleu4": 0.01, "meteor": 0.07, "rouge_l": 0.07, "cider": 0.00}


def paper_number(benchmark: str, system: str, metric: str) -> Number | None:
    """The paper's number for `system` on `benchmark` and `metric`, if it reports one."""
    if benchmark == "musiccaps" and system == "model" and metric in MUSICCAPS_MODEL:
        return (MUSICCAPS_MODEL[metric], None)
    if benchmark not in PAPER:
        return None
    paper_metric, ours, _ = PAPER[benchmark]
    return ours.get(system) if metric == paper_metric else None
