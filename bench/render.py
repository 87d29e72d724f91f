"""Renders bench/RESULTS.md from the raw benchmark JSONs (`bench/run_all.py`)."""

from __future__ import annotations


def _row(batch: int):
    return lambda r: next(x for x in r["rows"] if x["batch"] == batch)


def _grounded_score(set_name: str, metric: str):
    """The own-audio score of `metric` on `set_name` when grounded, else 0 (the goal fails)."""
    def get(r: dict) -> float:
        score = r["scores"][set_name][metric]
        return score["audio"] if score["grounded"] else 0.0
    return get


GOALS = (  # (label, result name, getter, target, format, ceiling getter or None[, "<="]): #22
    ("Demo: `make demo` from an empty workdir, 2 cores, set-up excluded", "demo_run",
     lambda r: r["total_s"], 600, "{:.0f} s", None, "<="),
    ("Demo: held-out tempo Acc2, own audio, grounded (0 if not)", "demo_run",
     _grounded_score("held_out", "tempo_acc2"), 0.5, "{:.3f}", None),
    ("Train step vs torch, shape (a), fp32", "train_a", lambda r: r["speedup"], 1.4, "{:.2f}x",
     lambda r: r.get("max_speedup")),
    ("Train step, fraction of fp32 matmul limit, (a)", "train_a",
     lambda r: r["ours_fraction_of_limit"], 0.75, "{:.0%}", lambda r: 1.0),
    ("Train step vs torch, shape (a), bf16", "train_a_bf16", lambda r: r["speedup"], 1.0,
     "{:.2f}x", lambda r: r.get("max_speedup")),
    ("Decode vs HF generate, batch 1", "generate", lambda r: _row(1)(r)["speedup"], 2.5,
     "{:.2f}x", lambda r: _row(1)(r).get("max_speedup")),
    ("Decode steps, fraction of the weight-read bound, batch 8", "generate",
     lambda r: _row(8)(r)["ours_decode_fraction_of_bound"], 0.5, "{:.0%}", lambda r: 1.0),
    ("Non-pad tokens in packed batches", "pipeline", lambda r: r["non_pad_fraction"], 0.95,
     "{:.1%}", lambda r: 1.0),
    ("Host loop: wall time outside the jitted step, demo config, prefetch", "host_loop",
     lambda r: r["prefetch"]["outside"], 0.05, "{:.1%}", None, "<="),
)
NEGATIVE_NOTES = {  # a measured value below 0 that only noise can give
    "host_loop": "(below 0: the loop's step ran faster than the step alone, run-to-run noise)",
}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _goals(results: dict) -> list[str]:
    rows = []
    for label, name, get, target, fmt, ceiling_of, *compare in GOALS:
        sign = compare[0] if compare else ">="
        if name not in results:
            rows.append([label, f"{sign} " + fmt.format(target), "not run", "-", "-"])
            continue
        value = get(results[name])
        ceiling = ceiling_of(results[name]) if ceiling_of else None
        met = value <= target if sign == "<=" else value >= target
        status = "**met**" if met else "short"
        if not met and ceiling is not None and ceiling < target:
            status = "short: above this machine's ceiling"
        shown = fmt.format(value)
        if value < 0 and name in NEGATIVE_NOTES:
            shown += " " + NEGATIVE_NOTES[name]
        rows.append([label, f"{sign} " + fmt.format(target), shown,
                     "-" if ceiling is None else fmt.format(ceiling), status])
    rows.append(_accelerator_goal(results.get("accelerator")))
    return _table(["goal", "target", "measured", "machine ceiling", "status"], rows)


def _accelerator_goal(r: dict | None) -> list[str]:
    label = "Accelerator: MFU of the ~1B LLark step (bf16), decode batch 1/8/32"
    if r is None or r["tiny"]:
        return [label, "runs on one GPU/TPU", "not run on an accelerator yet "
                "(`bench/accelerator.py --write` there)", "-", "ready (tested on CPU, --tiny)"]
    decode = ", ".join(f"b{x['batch']} {x['tokens_per_s']:.0f} tok/s" for x in r["decode"]["rows"]
                       if "skipped" not in x)
    return [label, "runs on one GPU/TPU", f"MFU {r['train']['mfu']:.0%}; {decode} "
            f"({r['device']})", "-", "**met**"]


def _peak(results: dict) -> list[str]:
    rows = []
    for name, r in results.items():
        if r.get("benchmark") != "train_step":
            continue
        g, m = r["matmul_peak"]["gflops"], r["matmul_peak"]["gflops_median"]
        rows.append([name] + [f"{g[k]:.0f} ({m[k]:.0f})" for k in
                              ("jax_float32", "torch_float32", "jax_bfloat16", "torch_bfloat16")])
    return _table(["run (matmul GFLOP/s, best (median))", "XLA fp32", "torch fp32", "XLA bf16",
                   "torch bf16"], rows)


def _train(results: dict) -> list[str]:
    rows = []
    for name, r in results.items():
        if r.get("benchmark") != "train_step":
            continue
        loss = r["first_loss"]
        rows.append([
            name, r["shape"], r["dtype"], f"{r['batch']}x{r['seq_len']}",
            f"{r['ours_tokens_per_s']:.0f}", f"{r['torch_tokens_per_s']:.0f}",
            f"**{r['speedup']:.2f}x** ({r['speedup_median']:.2f}x)",
            f"{r['ours_gflops']:.0f} / {r['ours_fraction_of_limit']:.0%}",
            f"{r['torch_gflops']:.0f} / {r['torch_fraction_of_limit']:.0%}",
            f"{r['first_step_s_incl_compile']:.0f}",
            f"{abs(loss['ours'] - loss['torch']):.1e}",
            _other_attention(r),
        ])
    return _table(["run", "shape", "dtype", "batch", "ours tok/s", "torch tok/s",
                   "speedup best (median)", "ours GFLOP/s / of limit",
                   "torch GFLOP/s / of limit", "first step s (compile)", "|loss diff| step 1",
                   "other attention: step time / ours"], rows)


def _other_attention(r: dict) -> str:
    if "other_attention" not in r:
        return "-"
    o = r["other_attention"]
    return f"{o['attention']} / {r.get('attention', 'einsum')}: {o['time_ratio']:.2f}x"


def _generate(r: dict) -> list[str]:
    rows = [[str(x["batch"]), f"{x['ours_tokens_per_s']:.1f}", f"{x['hf_tokens_per_s']:.1f}",
             f"**{x['speedup']:.2f}x** ({x['speedup_median']:.2f}x)", f"{x['identical_rows']:.0%}"]
            for x in r["rows"]]
    for row, x in zip(rows, r["rows"], strict=True):
        row += ([f"{x['bound_tokens_per_s']:.1f}", f"{x['ours_fraction_of_bound']:.0%}"]
                if "bound_tokens_per_s" in x else ["-", "-"])
        row += ([f"{x['ours_step_ms']:.1f} / {x['hf_step_ms']:.1f}",
                 f"{x['ours_prefill_s']:.2f} / {x['hf_prefill_s']:.2f}",
                 f"**{x['ours_decode_fraction_of_bound']:.0%}**"]
                if "ours_step_ms" in x else ["-", "-", "-"])
    head = [f"shape ({r['shape']}), prompt {r['prompt_len']}, {r['new_tokens']} new tokens, "
            "greedy fp32. Bound = batch x read bandwidth / weight bytes (every weight is read "
            "once per decode step)"
            + (f": {r['read_bandwidth_gb_s']:.1f} GB/s measured in the run, "
               f"{r['weight_bytes'] / 1e6:.0f} MB of weights" if "weight_bytes" in r else "")
            + "."
            + (f" XLA's floor for one token's weight matrix-vector products alone (one jitted "
               f"program): {r['matvec_floor_ms']:.1f} ms = {r['matvec_floor_tokens_per_s']:.1f} "
               "tok/s at batch 1." if "matvec_floor_ms" in r else ""), ""]
    head[0] += (" Decode steps alone: (call - the call stopped after 1 token) / (new tokens - 1)"
                "; prefill = the 1-token call.")
    return head + _table(["batch", "ours tok/s", "HF generate tok/s", "speedup best (median)",
                          "identical outputs", "bound tok/s", "ours of bound (whole call)",
                          "ms/step ours / HF", "prefill s ours / HF",
                          "decode steps of bound"], rows)


def _plan(r: dict) -> list[str]:
    rows = []
    for name, t in r["targets"].items():
        rows.append([name, t["mesh"], f"{t['per_device_gb']:.1f} / {t['hbm_gb']:.0f}",
                     "yes" if t["fits"] else "**no**", f"{t['arguments_gb']:.1f}",
                     f"{t['temp_gb']:.1f}", f"{t['hours_padded_rows']:.1f}",
                     f"{t['hours_packed']:.1f}", f"{t['compile_s']:.0f}"])
    head = [f"`{r['config']}`: {next(iter(r['targets'].values()))['params'] / 1e9:.2f} B params, "
            f"100k steps x {next(iter(r['targets'].values()))['batch_size']} examples, "
            f"MFU {r['mfu']:.0%} (stated, not measured); packed = "
            f"{r['tokens_per_example']} tokens/example instead of full rows.", ""]
    return head + _table(["target", "mesh", "GB/device (XLA) / HBM", "fits", "arguments GB",
                          "temp GB", "hours (padded rows)", "hours (packed)", "compile s"], rows)


def _pipeline(r: dict) -> list[str]:
    rows = [[f"{r['non_pad_fraction']:.1%}", f"{r['examples_per_row']:.2f}",
             f"{r['pipeline_examples_per_s']:.0f}", f"{r['pipeline_tokens_per_s']:.0f}",
             f"{r['headroom']:.2f}"]]
    return _table(["non-pad fraction", "examples/row", "examples/s (1 core)", "tokens/s",
                   "headroom vs a host's step"], rows)


def _profile(r: dict) -> list[str]:
    rows = [[name, f"{p['seconds']:.2f}", f"{p['share_of_step']:.0%}",
             f"{p['gflops']:.0f}" if p["gflops"] else "-"] for name, p in r["parts"].items()]
    head = [f"shape ({r['shape']}), {r['dtype']}, batch {r['batch']}x{r['seq_len']}; parts "
            "jitted separately (`bench/profile_step.py`); layers + head_loss + optimizer = "
            f"{r['parts_sum_check']:.0%} of the step.", ""]
    return head + _table(["part", "seconds", "share of step", "GFLOP/s"], rows)


def _levers(r: dict) -> list[str]:
    c = r["compile_cache"]
    rows = [["persistent compilation cache (compile of the step)",
             f"cold {c['cold_compile_s']:.1f} s -> warm {c['warm_compile_s']:.1f} s",
             f"{c['speedup']:.1f}x faster start"]]
    for name, v in r["step_variants"].items():
        if name != "default":
            rows.append([f"step with {name.replace('_', ' ')} (vs default)",
                         f"{v['min']:.2f} s vs {r['step_variants']['default']['min']:.2f} s",
                         f"{v['relative_to_default']:.2f}x the default's time"])
    if "host_syncs" in r:
        h = r["host_syncs"]
        rows.append([f"{h['steps']} steps, loss fetched after each (vs once at the end)",
                     f"{h['sync_each_step']['min']:.2f} s vs {h['sync_at_end']['min']:.2f} s",
                     f"{h['ratio']:.2f}x the time"])
    return [f"shape ({r['shape']}), fp32 (`bench/levers.py`)", ""] + _table(
        ["lever", "measured", "effect"], rows)


def _demo_distortions(r: dict) -> list[str]:
    rows = [[variant, f"{v['key_mirex']:.3f}", f"{v['key_same']:.2f}", f"{v['tempo_acc2']:.3f}",
             f"{v['tempo_same']:.2f}"] for variant, v in r["variants"].items()]
    return [f"The demo model's answers on its {r['n_clips']} {r['set']} clips written as users' "
            "files (`data_prep.demo_augment.USER_FILE_DISTORTIONS`) and asked through `infer "
            "--audio-dir`; \"same\": share of answers equal to the undistorted file's.", "",
            *_table(["file", "key MIREX", "key same", "tempo Acc2", "tempo same"], rows)]


ACCELERATOR_HEADING = "## Accelerator (`bench/accelerator.py`)"


def _demo(r: dict) -> list[str]:
    stages = ", ".join(f"{k} {v:.0f}" for k, v in r["stage_seconds"].items())
    rows = [[name, metric, f"{score['audio']:.3f}", "yes" if score["grounded"] else "no"]
            for name, metrics in r["scores"].items() for metric, score in metrics.items()]
    cache = {"empty": "an empty XLA compilation cache (a first run)",
             "warm": "the user's warm XLA compilation cache (a rerun's compiles)"}.get(
                 r.get("compilation_cache", ""), "an unrecorded XLA compilation cache")
    return [f"Total {r['total_s']:.0f} s wall ({r['total_cpu_s']:.0f} CPU s) by the demo's own "
            f"stage markers, with {cache}; stages (s): {stages}. Grounded: own audio beats "
            "shuffled audio and the best constant answer with disjoint 95% intervals "
            "(docs/demo.md).", "",
            *_table(["set", "metric", "own audio", "grounded"], rows)]


def accelerator_section(r: dict) -> list[str]:
    """The Accelerator section (heading included) of one `bench/accelerator.py` result."""
    t, d = r["train"], r["decode"]
    shape = "tiny CPU stand-in" if r["tiny"] else "~1B Llama"
    rows = [["train step (LLark, bf16)", f"{t['shape']}, {t['batch']}x{t['seq_len']}",
             f"{t['tokens_per_s']:.0f} tok/s, {t['seconds']['min']:.3f} s/step, "
             f"{t['tflops']:.1f} TFLOP/s", f"MFU **{t['mfu']:.1%}**"]]
    for x in d["rows"]:
        if "skipped" in x:
            rows.append([f"decode batch {x['batch']}", "-", f"skipped ({x['skipped']})", "-"])
            continue
        rows.append([f"decode batch {x['batch']}",
                     f"prompt {d['prompt_len']}, {d['new_tokens']} new",
                     f"{x['tokens_per_s']:.0f} tok/s (steps alone "
                     f"{x['ours_decode_tokens_per_s']:.0f} tok/s, {x['ours_step_ms']:.2f} ms/step)",
                     f"**{x['decode_fraction_of_bound']:.0%}** of bound "
                     f"({x['bound_tokens_per_s']:.0f} tok/s)"])
    return [ACCELERATOR_HEADING, "",
            f"{r['devices']} x {r['device']} ({r['platform']}), {shape}, attention "
            f"`{r['attention']}`, run on {r['date']} in {r['wall_s']:.0f} s (budget "
            f"{r['budget_s']:.0f} s). MFU against {r['peak_bf16_flops'] / 1e12:.0f} TFLOP/s "
            f"({r['peak_source']}); decode bound = batch x {d['read_bandwidth_gb_s']:.0f} GB/s "
            f"read (measured) / {d['weight_bytes'] / 1e9:.2f} GB of bf16 weights. Compile of the "
            f"step: {t['compile_s']:.0f} s.", "",
            *_table(["part", "shape", "measured", "of peak / bound"], rows), ""]


def replace_section(text: str, heading: str, section: list[str]) -> str:
    """`text` with the `heading` section (up to the next `## ` heading or the wall-time line)
    replaced by `section`; inserted before the wall-time line (or at the end) when absent."""
    lines = text.splitlines()
    ends = ("## ", "Benchmark wall time")
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(ends)),
                   len(lines))
    else:
        start = end = next((i for i, line in enumerate(lines) if line.startswith(ends[1])),
                           len(lines))
    return "\n".join(lines[:start] + section + lines[end:]) + "\n"


def render(results: dict, info: dict) -> str:
    """The whole RESULTS.md text."""
    out = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` (`bench/run_all.py`) on {info.get('date', '?')}, commit "
        f"`{info.get('commit', '?')}`: {info.get('cpu', '?')}, {info.get('cores', '?')} cores, "
        f"jax {info.get('jax', '?')}, torch {info.get('torch', '?')}.",
        "Ratios compare candidates run interleaved in the same process; best-of-rounds times "
        "(medians in parentheses). Absolute numbers on a shared machine are noise; ratios are "
        "the result. Explanations and profiles: `docs/performance.md`.",
        "",
        "## Goals",
        "",
        *_goals(results),
        "",
        "Machine ceiling: the best this machine allows. Train speedup: ours at 100% of the "
        "matmul limit against the measured torch step. Decode speedup: the memory-bandwidth "
        "bound (below) against the measured HF generate. Targets: issue 22.",
        "",
        "## Train step (one optimizer step: forward, backward, clip, AdamW)",
        "",
        *_train(results),
        "",
        "GFLOP/s = analytic FLOPs the step executes (6·N·tokens + attention + projector; the "
        "LM head counted at the positions each framework computes: ours at the 200 answer "
        "positions per row (`train.head_positions`), torch at all 512) / step time; limit = "
        "the higher framework's n x n matmul GFLOP/s of the step's dtype, measured in the "
        "same process:",
        "",
        *_peak(results),
        "",
    ]
    if "profile" in results:
        out += ["### Profile of the step", "", *_profile(results["profile"]), ""]
    if "levers" in results:
        out += ["### Levers", "", *_levers(results["levers"]), ""]
    if "demo_run" in results:
        out += ["## Demo (`bench/demo_run.py`: `make demo` from an empty workdir)", "",
                *_demo(results["demo_run"]), ""]
    if "demo_distortions" in results:
        out += ["### Demo answers through users' files (`bench/demo_distortions.py`)", "",
                *_demo_distortions(results["demo_distortions"]), ""]
    if "generate" in results:
        out += ["## Decode (KV cache)", "", *_generate(results["generate"]), ""]
    if "plan" in results:
        out += ["## Planner: the paper's recipe on accelerators", "", *_plan(results["plan"]), ""]
    if "pipeline" in results:
        out += ["## Input pipeline (`bench/pipeline.py`)", "", *_pipeline(results["pipeline"]),
                ""]
    if "accelerator" in results:
        out += accelerator_section(results["accelerator"])
    if info.get("durations_s"):
        total = sum(info["durations_s"].values())
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in info["durations_s"].items())
        out += [f"Benchmark wall time: {total / 60:.1f} min ({parts}).", ""]
    return "\n".join(out)
