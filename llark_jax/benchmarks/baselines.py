"""Baselines beside the model: every one is a text answer per clip, scored like the model's.

* `majority`: the most frequent label for every clip (key, genre); for instruments the
  `majority_k` most frequent instruments of the clips (paper §D.1.4: five for MedleyDB, piano for
  MusicNet).
* `random`: a seeded random answer per clip: a uniform key of the 24, a uniform tempo in madmom's
  40-250 BPM range, a uniform genre of the label set, each candidate instrument with probability
  (mean instruments per clip / candidates), or another clip's reference caption.
* `madmom` (key, tempo): the annotator that labelled LLark's training data
  (`llark_jax.audio.annotator`), run as annotation runs, on the whole track (at most 360 s);
  `madmom_answer` makes one answer.
The model with another clip's audio (`model-shuffled`) is produced by `runner.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from llark_jax.benchmarks.clips import Clip
from llark_jax.benchmarks.registry import Benchmark
from llark_jax.eval.parse import KEY_NAMES

TEMPO_RANGE_BPM = (40.0, 250.0)  # madmom's TempoEstimationProcessor range


def _instrument_counts(clips: Sequence[Clip]) -> Counter:
    return Counter(name for clip in clips for name in clip.label)


def majority_answers(benchmark: Benchmark, clips: Sequence[Clip]) -> list[str]:
    """The same answer for every clip (ties: the label seen first, clips in id order)."""
    if benchmark.task == "instruments":
        top = [name for name, _ in _instrument_counts(clips).most_common(benchmark.majority_k)]
        return [", ".join(top)] * len(clips)
    if benchmark.task in ("key", "genre"):
        label, _ = Counter(str(c.label) for c in clips).most_common(1)[0]
        return [label] * len(clips)
    raise ValueError(f"no majority baseline for task {benchmark.task!r}")


def random_answers(benchmark: Benchmark, clips: Sequence[Clip], seed: int = 0) -> list[str]:
    """One seeded random answer per clip (module docstring)."""
    rng = np.random.default_rng(seed)
    n = len(clips)
    if benchmark.task == "key":
        return [KEY_NAMES[i] for i in rng.integers(0, len(KEY_NAMES), n)]
    if benchmark.task == "tempo":
        return [f"{bpm:.1f} BPM" for bpm in rng.uniform(*TEMPO_RANGE_BPM, n)]
    if benchmark.task == "genre":
        genres = list(benchmark.classes or sorted({str(c.label) for c in clips}))
        return [genres[i] for i in rng.integers(0, len(genres), n)]
    if benchmark.task == "instruments":
        candidates = sorted({*_instrument_counts(clips), *benchmark.vocabulary})
        p = np.mean([len(c.label) for c in clips]) / len(candidates)
        draws_nc = rng.random((n, len(candidates))) < p
        return [", ".join(name for name, on in zip(candidates, row, strict=True) if on)
                for row in draws_nc]
    if benchmark.task == "captions":
        if n < 2:
            return [""] * n
        order = rng.permutation(n)
        partner = np.empty(n, np.int64)
        partner[order] = np.roll(order, -1)  # a derangement: never the clip's own caption
        return [str(clips[j].label) for j in partner]
    raise ValueError(f"no random baseline for task {benchmark.task!r}")


def madmom_answer(task: str, audio_path: str) -> str:
    """The annotator's key ("Bb major") or tempo ("128.0 BPM", "" if none) of a whole track."""
    from llark_jax.audio.annotator import MAX_ANNOTATION_S, MIN_ANNOTATION_S, get_annotator
    from llark_jax.audio.io import load_audio

    audio_n = load_audio(audio_path, 0.0, MAX_ANNOTATION_S, min_duration_s=MIN_ANNOTATION_S)
    annotator = get_annotator()
    if task == "key":
        return annotator.key_label(audio_n)
    bpm = annotator.tempo_bpm(audio_n)
    return "" if bpm is None else f"{bpm} BPM"
