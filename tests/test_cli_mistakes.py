"""User mistakes on every CLI end with one `error:` line on stderr and exit status 2, no traceback.

Each row is a real subprocess (`python -m llark_jax ...` / `python -m data_prep ...`) run from a
folder outside the checkout; every one fails before a model or an encoder is loaded, so the whole
table takes seconds. argparse's own errors (`PROG: error: ...`) count as the same one-line form.
`--debug` (or `LLARK_DEBUG=1`) brings the traceback back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

# (id, argv with {tmp} for the scratch folder, text the error line must contain)
MISTAKES: list[tuple[str, list[str], str]] = [
    ("no-command", ["llark_jax"], "no command given"),
    ("unknown-command", ["llark_jax", "trian"], "did you mean 'train'"),
    ("unknown-flag", ["llark_jax", "train", "--config", "tiny", "--workdir", "{tmp}/w",
                      "--stepz", "3"], "unrecognized arguments: --stepz"),
    ("missing-required-flag", ["llark_jax", "train", "--config", "tiny"],
     "required: --workdir"),
    ("config-file-not-found", ["llark_jax", "train", "--config", "configs/nope.py",
                               "--workdir", "{tmp}/w"], "config file not found: configs/nope.py"),
    ("config-name-typo", ["llark_jax", "train", "--config", "tiyn", "--workdir", "{tmp}/w"],
     "did you mean --config tiny?"),
    ("unknown-config-stage", ["llark_jax", "train", "--config", "musilingo:rlhf",
                              "--workdir", "{tmp}/w"], "musilingo stage 'rlhf'"),
    ("unknown-config-field", ["llark_jax", "train", "--config", "tiny", "--workdir", "{tmp}/w",
                              "--config.train.stepz=3"], "unknown field 'stepz'"),
    ("unknown-config-section", ["llark_jax", "train", "--config", "tiny", "--workdir",
                                "{tmp}/w", "--config.trian.steps=3"], "no config section 'trian'"),
    ("bad-override-value", ["llark_jax", "train", "--config", "tiny", "--workdir", "{tmp}/w",
                            "--config.train.steps=many"], "expected a number, got 'many'"),
    ("override-without-value", ["llark_jax", "train", "--config", "tiny", "--workdir",
                                "{tmp}/w", "--config.train.steps"], "missing value"),
    ("unknown-model-source", ["llark_jax", "train", "--config", "tiny", "--workdir", "{tmp}/w",
                              "--config.model.source=hug"], "model.source='hug': choose one of"),
    ("unknown-mesh-axis-in-rules", ["llark_jax", "train", "--config", "tiny", "--workdir",
                                    "{tmp}/w", "--config.logical_axis_rules=[['embed', 'zero3']]"],
     "logical_axis_rules: rule 'embed': unknown mesh axes ['zero3']"),
    ("hf-model-path-missing", ["llark_jax", "train", "--config", "tiny", "--workdir", "{tmp}/w",
                               "--config.model.source=hf", "--config.model.path={tmp}/llama"],
     "no such directory"),
    ("warmup-not-below-steps", ["llark_jax", "train", "--config", "tiny", "--workdir",
                                "{tmp}/w-schedule",
                                "--config.train.steps=2"], "warmup steps 2 must be in"),
    ("workdir-is-a-file", ["llark_jax", "train", "--config", "tiny", "--workdir",
                           "{tmp}/audio/a.wav"], "exists and is not a directory"),
    ("plan-unknown-config", ["llark_jax", "plan", "--config", "llark_8b"],
     "did you mean --config llark_7b?"),
    ("plan-bad-mesh", ["llark_jax", "plan", "--config", "tiny", "--mesh", "fsdp"],
     "expected AXIS=SIZE"),
    ("demo-unknown-config", ["llark_jax", "demo", "--config", "{tmp}/nope.py"],
     "config file not found"),
    ("eval-missing-predictions", ["llark_jax", "eval", "key", "--predictions", "{tmp}/p.jsonl",
                                  "--labels", "{tmp}/l.jsonl", "--output", "{tmp}/r.json"],
     "--predictions {tmp}/p.jsonl: no such file"),
    ("eval-unknown-task", ["llark_jax", "eval", "mood", "--predictions", "p", "--labels", "l",
                           "--output", "r"], "invalid choice: 'mood'"),
    ("infer-missing-checkpoint", ["llark_jax", "infer", "--checkpoint", "{tmp}/nowhere",
                                  "--audio", "{tmp}/audio/a.wav", "--question", "Key?"],
     "{tmp}/nowhere: no such directory"),
    ("infer-no-checkpoint-in-workdir", ["llark_jax", "infer", "--checkpoint", "{tmp}/empty",
                                        "--audio", "{tmp}/audio/a.wav", "--question", "Key?"],
     "no llark.json"),
    ("infer-missing-audio", ["llark_jax", "infer", "--checkpoint", "{tmp}/empty", "--audio",
                             "{tmp}/nope.wav", "--question", "Key?"], "no such file"),
    ("infer-empty-audio-dir", ["llark_jax", "infer", "--checkpoint", "{tmp}/empty",
                               "--audio-dir", "{tmp}/empty", "--question", "Key?"],
     "no audio files"),
    ("infer-records-without-output", ["llark_jax", "infer", "--checkpoint", "{tmp}/empty",
                                      "--records", "{tmp}/r.tfrecord"], "--records needs --output"),
    ("export-no-checkpoint", ["llark_jax", "export", "--checkpoint", "{tmp}/nowhere",
                              "--output", "{tmp}/hf"], "does not exist"),
    ("serve-no-checkpoint-in-workdir", ["llark_jax", "serve", "--checkpoint", "{tmp}/empty"],
     "no llark.json"),
    ("prep-unknown-stage", ["data_prep", "embd"], "did you mean 'embed'"),
    ("embed-missing-dir", ["data_prep", "embed", "--audio-dir", "/does/not/exist",
                           "--output-dir", "{tmp}/emb"], "/does/not/exist: no such directory"),
    ("embed-empty-dir", ["data_prep", "embed", "--audio-dir", "{tmp}/empty",
                         "--output-dir", "{tmp}/emb"], "no audio files"),
    ("embed-bad-encoder-arg", ["data_prep", "embed", "--audio-dir", "{tmp}/audio",
                               "--output-dir", "{tmp}/emb", "--encoder-arg", "layers"],
     "expects KEY=VALUE"),
    ("crop-missing-dir", ["data_prep", "crop", "--input-dir", "/does/not/exist",
                          "--output-dir", "{tmp}/clips"], "/does/not/exist: no such directory"),
    ("crop-empty-dir", ["data_prep", "crop", "--input-dir", "{tmp}/empty",
                        "--output-dir", "{tmp}/clips"], "no audio files"),
    ("annotate-missing-dir", ["data_prep", "annotate", "--audio-dir", "/does/not/exist",
                              "--output", "{tmp}/a.jsonl"], "/does/not/exist: no such directory"),
    ("annotate-empty-dir", ["data_prep", "annotate", "--audio-dir", "{tmp}/empty",
                            "--output", "{tmp}/a.jsonl"], "no audio files"),
    ("annotate-missing-records", ["data_prep", "annotate", "--records", "{tmp}/tracks.jsonl",
                                  "--output", "{tmp}/a.jsonl"], "no such file"),
    ("write-missing-annotations", ["data_prep", "write", "--annotations", "{tmp}/a.jsonl",
                                   "--qa", "{tmp}/qa.jsonl", "--embeddings", "{tmp}/emb",
                                   "--output-dir", "{tmp}/rec"], "--annotations"),
    ("instruct-missing-metadata", ["data_prep", "instruct", "--metadata", "{tmp}/m.jsonl",
                                   "--task", "mir", "--dataset", "demo", "--output",
                                   "{tmp}/qa.jsonl"], "--metadata"),
    ("jsonify-missing-root", ["data_prep", "jsonify", "--dataset", "fma", "--root",
                              "{tmp}/fma", "--output", "{tmp}/t.jsonl"], "no such directory"),
    ("merge-missing-annotations", ["data_prep", "merge", "--annotations", "{tmp}/a.jsonl",
                                   "--output", "{tmp}/m.jsonl"], "no such file"),
    ("benchmark-unknown-name", ["llark_jax", "benchmark", "giantstep-key", "--data-dir", "{tmp}",
                                "--model", "{tmp}/m", "--output", "{tmp}/b"],
     "invalid choice: 'giantstep-key'"),
    ("benchmark-missing-data-dir", ["llark_jax", "benchmark", "gtzan", "--data-dir",
                                    "{tmp}/nowhere", "--model", "{tmp}/m", "--output",
                                    "{tmp}/b"], "--data-dir {tmp}/nowhere: no such directory"),
    ("benchmark-not-the-layout", ["llark_jax", "benchmark", "giantsteps-key", "--data-dir",
                                  "{tmp}/empty", "--model", "{tmp}/m", "--output", "{tmp}/b"],
     "{tmp}/empty/annotations/key: annotation directory not found"),
    ("benchmark-no-questions", ["llark_jax", "benchmark", "muchomusic", "--data-dir",
                                "{tmp}/empty", "--model", "{tmp}/m", "--output", "{tmp}/b"],
     "no muchomusic.json"),
    ("infer-zero-new-tokens", ["llark_jax", "infer", "--checkpoint", "{tmp}/empty", "--audio",
                               "{tmp}/audio/a.wav", "--question", "Key?", "--max-new-tokens",
                               "0"], "expected an integer >= 1, got 0"),
    ("infer-top-p-above-one", ["llark_jax", "infer", "--checkpoint", "{tmp}/empty", "--audio",
                               "{tmp}/audio/a.wav", "--question", "Key?", "--top-p", "2"],
     "expected a number in (0, 1], got 2"),
    ("serve-port-out-of-range", ["llark_jax", "serve", "--checkpoint", "{tmp}/empty", "--port",
                                 "99999"], "expected a port in 0..65535"),
    ("serve-zero-batch", ["llark_jax", "serve", "--checkpoint", "{tmp}/empty", "--batch-size",
                          "0"], "expected an integer >= 1"),
    ("plan-json-config", ["llark_jax", "plan", "--config", "{tmp}/llark.json"],
     "not a .json file"),
    ("plan-unknown-mesh-axis", ["llark_jax", "plan", "--config", "tiny", "--mesh", "bogus=2"],
     "bad mesh spec 'bogus=2'"),
    ("plan-zero-mfu", ["llark_jax", "plan", "--config", "tiny", "--mfu", "0"],
     "expected a number in (0, 1]"),
    ("eval-negative-tolerance", ["llark_jax", "eval", "tempo", "--predictions", "p", "--labels",
                                 "l", "--output", "r", "--tolerance", "-1"], "a number > 0"),
    ("eval-audio-as-predictions", ["llark_jax", "eval", "key", "--predictions",
                                   "{tmp}/audio/a.wav", "--labels", "{tmp}/labels.jsonl",
                                   "--output", "{tmp}/r.json"], "not a UTF-8 JSONL file"),
    ("eval-nothing-joins", ["llark_jax", "eval", "key", "--predictions", "{tmp}/rows.jsonl",
                            "--labels", "{tmp}/labels.jsonl", "--output", "{tmp}/r.json"],
     "nothing to score"),
    ("eval-output-is-a-folder", ["llark_jax", "eval", "key", "--predictions", "{tmp}/pred.jsonl",
                                 "--labels", "{tmp}/labels.jsonl", "--output", "{tmp}/empty"],
     "is a folder, expected a file path: {tmp}/empty"),
    ("annotate-records-not-jsonl", ["data_prep", "annotate", "--records", "{tmp}/fake.wav",
                                    "--output", "{tmp}/a.jsonl"], "fake.wav:1: not JSONL"),
    ("crop-records-of-another-kind", ["data_prep", "crop", "--records", "{tmp}/rows.jsonl",
                                      "--output-dir", "{tmp}/clips"],
     "row 1 has no 'id', 'audio_path': expected track records"),
    ("embed-unknown-encoder-arg", ["data_prep", "embed", "--audio-dir", "{tmp}/audio",
                                   "--output-dir", "{tmp}/emb", "--encoder", "mir",
                                   "--encoder-arg", "nonsense=3"],
     "encoder 'mir' has no argument(s) ['nonsense']"),
    ("train-process-id-without-coordinator", ["llark_jax", "train", "--config", "tiny",
                                              "--workdir", "{tmp}/w", "--num_processes", "2",
                                              "--process_id", "1"], "need --coordinator"),
    ("embed-output-dir-is-a-file", ["data_prep", "embed", "--audio-dir", "{tmp}/audio",
                                    "--output-dir", "{tmp}/rows.jsonl"],
     "a file is in the way of a folder: {tmp}/rows.jsonl"),
    ("instruct-metadata-not-jsonl", ["data_prep", "instruct", "--metadata", "{tmp}/fake.wav",
                                     "--task", "mir", "--dataset", "demo", "--output",
                                     "{tmp}/qa.jsonl", "--backend", "offline"],
     "no usable clip record (invalid_json: 1)"),
    ("instruct-output-is-a-folder", ["data_prep", "instruct", "--metadata", "{tmp}/rows.jsonl",
                                     "--task", "mir", "--dataset", "demo", "--output",
                                     "{tmp}/empty", "--backend", "offline"],
     "--output {tmp}/empty: is a folder, expected a file path"),
    ("benchmark-output-is-a-file", ["llark_jax", "benchmark", "giantsteps-key", "--data-dir",
                                    "{tmp}", "--model", "{tmp}/m", "--output",
                                    "{tmp}/rows.jsonl"],
     "--output {tmp}/rows.jsonl: is a file, expected a folder"),
    ("crop-p-middle-above-one", ["data_prep", "crop", "--input-dir", "{tmp}/audio",
                                 "--output-dir", "{tmp}/clips", "--p-middle", "3"],
     "expected a probability in [0, 1], got 3"),
    ("crop-no-usable-audio", ["data_prep", "crop", "--input-dir", "{tmp}/bad", "--output-dir",
                              "{tmp}/clips-of-bad"], "crop: none of the 1 inputs could be used"),
    ("jsonify-split-the-dataset-lacks", ["data_prep", "jsonify", "--dataset", "musiccaps",
                                         "--root", "{tmp}/musiccaps", "--output",
                                         "{tmp}/mc.jsonl", "--split", "validation"],
     "--split validation matches none of the dataset's splits: test"),
    ("merge-crops-instead-of-annotations", ["data_prep", "merge", "--annotations",
                                            "{tmp}/crops.jsonl", "--output", "{tmp}/m.jsonl"],
     "row 1 has neither madmom fields nor dataset labels (`metadata`): expected annotate"),
    ("demo-missing-ood-dir", ["llark_jax", "demo", "--workdir", "{tmp}/demo", "--ood-dir",
                              "{tmp}/nope", "--stop-after", "synth"],
     "--ood-dir {tmp}/nope: no such folder"),
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LLARK_DEBUG"}
    env.update(JAX_PLATFORMS="cpu", LLARK_JAX_COMPILATION_CACHE="off", PYTHONUNBUFFERED="1")
    return env


def _run(argv: list[str], tmp: Path, env: dict[str, str] | None = None):
    args = [a.replace("{tmp}", str(tmp)) for a in argv]
    return subprocess.run([sys.executable, "-m", *args], cwd=tmp, env=env or _env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("mistakes")
    (tmp / "empty").mkdir()
    (tmp / "audio").mkdir()
    t = np.arange(22050) / 44100
    sf.write(tmp / "audio" / "a.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32),
             44100)
    (tmp / "fake.wav").write_text("not audio\n")
    (tmp / "bad").mkdir()
    (tmp / "bad" / "fake.wav").write_text("not audio\n")
    (tmp / "musiccaps").mkdir()  # one MusicCaps row, of the test split
    (tmp / "musiccaps" / "musiccaps-public.csv").write_text(
        "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,"
        "is_balanced_subset,is_audioset_eval\n"
        "abc,30,40,/m/04rlf,\"['piano']\",A piano.,1,False,True\n")
    (tmp / "crops.jsonl").write_text(  # a crop stage row
        '{"end_secs": 25.0, "id": "t-0", "path": "clips/t-0.wav", "start_secs": 0.0, '
        '"track_id": "t"}\n')
    (tmp / "llark.json").write_text('{"standardize": true}\n')  # a model directory's manifest
    (tmp / "rows.jsonl").write_text('{"clip_id": "x", "answer": "C major"}\n')
    (tmp / "pred.jsonl").write_text('{"clip_id": "c", "answer": "C major"}\n')
    (tmp / "labels.jsonl").write_text('{"clip_id": "c", "key": "C major"}\n')
    return tmp


@pytest.fixture(scope="module")
def results(scratch):
    """Every row run once, two at a time (2 cores)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda row: (row[0], _run(row[1], scratch)), MISTAKES)
        return dict(done)


def test_the_table_covers_both_clis_and_many_mistakes():
    assert len(MISTAKES) >= 15
    commands = {(argv[0], argv[1] if len(argv) > 1 else "") for _, argv, _ in MISTAKES}
    for command in ("train", "infer", "eval", "export", "serve", "plan", "demo"):
        assert ("llark_jax", command) in commands
    for stage in ("crop", "annotate", "embed", "write", "instruct", "jsonify", "merge"):
        assert ("data_prep", stage) in commands


@pytest.mark.parametrize("name, argv, expected", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_mistake_is_one_error_line_and_status_2(results, scratch, name, argv, expected):
    result = results[name]
    stderr = result.stderr
    assert result.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    # ours: "error: ..."; argparse's: "python -m llark_jax train: error: ..."
    assert last.startswith("error: ") or ": error: " in last, stderr
    assert expected.replace("{tmp}", str(scratch)) in last, stderr


def test_debug_shows_the_traceback(scratch):
    argv = ["llark_jax", "--debug", "train", "--config", "tiyn", "--workdir", "{tmp}/w"]
    result = _run(argv, scratch)
    assert result.returncode == 1 and "Traceback" in result.stderr
    assert "ConfigError: unknown config: tiyn" in result.stderr
    result = _run(["data_prep", "embed", "--audio-dir", "{tmp}/empty", "--output-dir", "{tmp}/e"],
                  scratch, env={**_env(), "LLARK_DEBUG": "1"})
    assert result.returncode == 1 and "MissingInputError" in result.stderr


def test_no_output_is_left_behind_by_a_rejected_input(scratch, results):
    assert not (scratch / "clips").exists()  # crop checks its input before creating OUT
    assert not (scratch / "emb").exists()
    assert not (scratch / "w").exists()  # config checks come before the workdir is made
    assert not (scratch / "demo").exists()  # --ood-dir is checked before the first stage
