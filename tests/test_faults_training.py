"""Fault suite, training half: each fault of the robustness issue reproduced on real artefacts
(checkpoints written by `train` on configs/tiny.py, TFRecord shards written by `data_prep`'s
writer and then damaged on disk) with the behaviour the fix promises.

- a config that does not fit the workdir's checkpoints stops in one `error:` line naming the
  fields and touches nothing; `--restart` moves the old run aside and starts over;
- bytes flipped inside the newest checkpoint fail its integrity check: it is set aside loudly
  and the previous one resumes, bit-exactly;
- a workdir whose every checkpoint was set aside never restarts silently;
- a NaN loss names the step's clips, writes them to a file, and `data.skip_clips` gets the rerun
  past that step;
- corrupt, truncated, wrong-shape and non-finite records are logged with shard and byte offset,
  counted in metrics.jsonl and listed in train_summary.json; when nothing is usable the one
  error line names the shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from records_helpers import make_inputs
from tokenizer_fixtures import make_llark_tokenizer
from train_helpers import TINY

from data_prep.records import write_records
from llark_jax.data.records import (
    ClipRecord,
    QAPair,
    RecordError,
    decode_clip,
    encode_clip,
    frame_record,
)
from llark_jax.train.loop import EXIT_NAN, main


def _args(workdir: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["--config", str(TINY), "--workdir", str(workdir), f"--config.train.steps={steps}",
            "--config.train.checkpoint_every=2", "--config.train.keep_checkpoints=3",
            "--config.metrics.tensorboard=False", *extra]


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with the sha256 of its bytes ('dir' for folders)."""
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def _metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _steps(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / "checkpoints").iterdir())


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory) -> Path:
    """configs/tiny.py trained 4 steps, checkpoints at 2 and 4 (copied by each test)."""
    workdir = tmp_path_factory.mktemp("tiny") / "w"
    assert main(_args(workdir)) == 0
    return workdir


def _copy(workdir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "w"
    shutil.copytree(workdir, target)
    return target


# ------------------------------------------------------------------ config does not fit


@pytest.mark.parametrize("override, field", [
    ("--config.model.llama.hidden_size=48", "model.llama.hidden_size: 32 -> 48"),
    ("--config.model.llama.vocab_size=300", "model.llama.vocab_size: 256 -> 300"),
    ("--config.model.trainable=projector_only",
     "model.trainable: 'llark_reference' -> 'projector_only'"),
])
def test_config_mismatch_stops_in_one_line_and_touches_no_checkpoint(trained_tiny, tmp_path,
                                                                      capsys, override, field):
    workdir = _copy(trained_tiny, tmp_path)
    before = _snapshot(workdir)
    capsys.readouterr()
    assert main(_args(workdir, override)) == 2
    err = capsys.readouterr().err
    errors = _error_lines(err)
    assert len(errors) == 1, err
    assert field in errors[0] and "--restart" in errors[0], errors[0]
    assert "Traceback" not in err and "Event loop is closed" not in err
    assert _snapshot(workdir) == before  # no checkpoint renamed, manifest and metrics untouched

    # The original command (with more steps) resumes from step 4: nothing was lost.
    first = _metrics(workdir)
    assert main(_args(workdir, steps=6)) == 0
    after = _metrics(workdir)
    assert [r["step"] for r in after] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in after[:4]] == [r["loss"] for r in first]
    assert not any(name.endswith(".corrupt") for name in _steps(workdir))


def test_restart_moves_the_old_run_aside_and_starts_over(trained_tiny, tmp_path, capsys):
    workdir = _copy(trained_tiny, tmp_path)
    old_metrics = (workdir / "metrics.jsonl").read_text()
    assert main(_args(workdir, "--config.model.llama.hidden_size=48", "--restart")) == 0
    err = capsys.readouterr().err
    previous = list((workdir / "previous").iterdir())
    assert len(previous) == 1 and str(previous[0]) in err
    assert (previous[0] / "metrics.jsonl").read_text() == old_metrics
    assert sorted(p.name for p in (previous[0] / "checkpoints").iterdir()) == ["2", "4"]
    assert [r["step"] for r in _metrics(workdir)] == [1, 2, 3, 4]
    manifest = json.loads((workdir / "llark.json").read_text())
    assert manifest["config"]["model"]["llama"]["hidden_size"] == 48


# ------------------------------------------------------------------ integrity


def _saved_arrays(step_dir: Path) -> dict[str, np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.restore((step_dir / "state").absolute())
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _flip_bytes_in_state(step_dir: Path, must_change: str = "") -> None:
    """Flips 8 bytes of an array data file of a checkpoint where Orbax reads the damaged values
    back WITHOUT an error (the silent case of the issue): tries a few offsets in each data file,
    largest first, keeping the first flip that changes a restored array (whose name starts with
    `must_change`). Which arrays share a data file depends on Orbax's writer threads, so the
    largest file need not hold the arrays asked for."""
    before = _saved_arrays(step_dir)
    files = sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()
                    and p.parent.name == "d"), key=lambda p: p.stat().st_size, reverse=True)
    for data in files:
        raw = data.read_bytes()
        for at in np.linspace(0.05, 0.95, 19) * len(raw):
            at = int(at)
            data.write_bytes(raw[:at] + bytes(b ^ 0x5A for b in raw[at : at + 8]) + raw[at + 8 :])
            try:
                after = _saved_arrays(step_dir)
            except Exception:  # noqa: BLE001 - a flip Orbax notices: not the silent case
                continue
            if any(name.startswith(must_change) and not np.array_equal(
                    before[name], after[name], equal_nan=True) for name in before):
                return
        data.write_bytes(raw)
    raise AssertionError(f"no silent flip found in {step_dir}")


def test_flipped_bytes_fail_the_integrity_check_and_the_step_is_set_aside(tmp_path, capsys,
                                                                          caplog):
    workdir = tmp_path / "w"
    args = _args(workdir, "--config.train.checkpoint_every=2", steps=6)
    assert main(args) == 0
    first = _metrics(workdir)
    _flip_bytes_in_state(workdir / "checkpoints" / "6")
    capsys.readouterr()
    with caplog.at_level(logging.ERROR):
        assert main(args) == 0
    err = capsys.readouterr().err
    assert "checkpoint step 6 failed its integrity check" in err
    assert any(r.levelno == logging.ERROR and "integrity" in r.getMessage() for r in caplog.records)
    assert "6.corrupt" in _steps(workdir) and (workdir / "checkpoints" / "6").is_dir()
    second = _metrics(workdir)
    assert [r["step"] for r in second] == [1, 2, 3, 4, 5, 6]
    # Steps 5-6 were recomputed from checkpoint 4 (the flip never reached training).
    assert [r["loss"] for r in second] == [r["loss"] for r in first]


def test_no_silent_restart_when_every_checkpoint_is_set_aside(trained_tiny, tmp_path, capsys):
    workdir = _copy(trained_tiny, tmp_path)
    for step in ("2", "4"):
        _flip_bytes_in_state(workdir / "checkpoints" / step)
    metrics = (workdir / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert main(_args(workdir)) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "--restart" in errors[0], errors
    assert _steps(workdir) == ["2.corrupt", "4.corrupt"]
    # The same command again must not start from step 1 and rewrite metrics.jsonl.
    assert main(_args(workdir)) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "set aside" in errors[0] and "--restart" in errors[0], errors
    assert (workdir / "metrics.jsonl").read_text() == metrics
    assert main(_args(workdir, "--restart")) == 0
    assert [r["step"] for r in _metrics(workdir)] == [1, 2, 3, 4]


def test_loading_a_model_verifies_the_digests_too(trained_tiny, tmp_path):
    from train_helpers import tiny_config

    from llark_jax.train.checkpoint import CheckpointIntegrityError, TrainCheckpointer
    from llark_jax.train.loop import TrainSetup

    workdir = _copy(trained_tiny, tmp_path)
    _flip_bytes_in_state(workdir / "checkpoints" / "4", must_change="['params']")
    target = TrainSetup(tiny_config()).abstract_state_with_shardings()
    subtrees = {"params": target["params"], "rest": target["rest"]}
    checkpointer = TrainCheckpointer(workdir / "checkpoints", keep=10, async_save=False)
    try:
        with pytest.raises(CheckpointIntegrityError, match="step 4 failed its integrity check"):
            checkpointer.restore_subtrees(4, subtrees)  # what load_model (infer, serve) reads
        checkpointer.restore_subtrees(2, subtrees)
    finally:
        checkpointer.close()


# ------------------------------------------------------------------ records and NaN


def _tokenizer_dir(root: Path) -> Path:
    path = root / "tokenizer"
    if not path.is_dir():
        make_llark_tokenizer().save_pretrained(str(path))
    return path


def _records_args(workdir: Path, records: Path, tokenizer: Path, *extra: str,
                  steps: int = 3) -> list[str]:
    return _args(workdir, "--config.data.source=tfrecord",
                 f"--config.data.path={records}/*.tfrecord",
                 f"--config.model.tokenizer={tokenizer}",
                 "--config.model.llama.vocab_size=640", "--config.model.audio_start_id=-1",
                 "--config.model.audio_patch_id=-1", "--config.model.audio_end_id=-1",
                 "--config.model.audio_dim=8", "--config.data.seq_len=96",
                 "--config.data.audio_frames=4", "--config.train.checkpoint_every=1", *extra,
                 steps=steps)


def _write_shards(root: Path, n_clips: int, shard_size: int) -> Path:
    make_inputs(root, n_clips, frames=(4, 4), dim=8, qa_per_clip=(1, 1), long_fraction=0.0)
    records = root / "records"
    write_records(root / "annotations.jsonl", [root / "qa.jsonl"], root / "embeddings", records,
                  "train", shard_size=shard_size, embedding_dtype="float32")
    return records


def _hand_record(clip_id: str, embedding: np.ndarray) -> bytes:
    """A framed record the writer would refuse (the reader must catch it)."""
    clip = ClipRecord(clip_id, "fma", "train", "mel", embedding,
                      (QAPair("What is the tempo?", "Slow.", "mir"),), {})
    return frame_record(encode_clip(clip))


def test_non_finite_embedding_is_rejected_on_read_with_the_clip_id():
    for bad in (np.nan, np.inf):
        embedding = np.ones((4, 8), np.float32)
        embedding[2, 3] = bad
        clip = ClipRecord("clip.nan", "fma", "train", "mel", embedding,
                          (QAPair("Q?", "A.", "mir"),), {})
        with pytest.raises(RecordError, match="clip clip.nan: embedding holds 1 non-finite"):
            decode_clip(encode_clip(clip))


def test_bad_records_are_logged_with_shard_and_offset_counted_and_summarised(tmp_path, caplog):
    records = _write_shards(tmp_path, 12, shard_size=4)
    shards = sorted(records.glob("*.tfrecord"))
    assert len(shards) == 3
    # shard 0: one payload byte flipped (CRC mismatch) in its second record
    raw = bytearray(shards[0].read_bytes())
    first_len = int.from_bytes(raw[:8], "little")
    second = 16 + first_len
    raw[second + 12 + 5] ^= 0xFF
    shards[0].write_bytes(bytes(raw))
    # shard 1: cut inside its last record
    raw = shards[1].read_bytes()
    shards[1].write_bytes(raw[: len(raw) - 7])
    # shard 2: a NaN embedding, an embedding whose shape does not match its bytes, a wrong width
    nan = np.ones((4, 8), np.float32)
    nan[0, 0] = np.nan
    lying = encode_clip(ClipRecord("clip.lying", "fma", "train", "mel",
                                   np.ones((4, 8), np.float32), (QAPair("Q?", "A.", "mir"),), {}))
    assert lying.count(b"\x0a\x02\x04\x08") == 1  # the packed embedding_shape [4, 8]
    lying = lying.replace(b"\x0a\x02\x04\x08", b"\x0a\x02\x05\x08")  # now claims [5, 8]
    tail = shards[2].stat().st_size
    extra = (_hand_record("clip.nan", nan) + frame_record(lying)
             + _hand_record("clip.wide", np.ones((4, 5), np.float32)))
    with open(shards[2], "ab") as f:
        f.write(extra)

    workdir = tmp_path / "w"
    with caplog.at_level(logging.WARNING):
        assert main(_records_args(workdir, records, _tokenizer_dir(tmp_path))) == 0
    log = caplog.text
    assert f"{shards[0]} @ byte {second}: corrupt record" in log
    assert f"{shards[1]}: truncated record at byte" in log
    assert f"{shards[2]} @ byte {tail}: clip clip.nan: embedding holds 1 non-finite" in log
    assert "clip clip.lying: embedding_shape [5, 8]" in log
    assert "clip clip.wide: 5-dim features" in log
    rows = _metrics(workdir)
    assert all(r["skipped_records"] >= 3 for r in rows)  # counted in the per-step metrics
    summary = json.loads((workdir / "train_summary.json").read_text())
    listed = {(b["shard"], b["offset"]) for b in summary["bad_records"]}
    assert (str(shards[0]), second) in listed and (str(shards[2]), tail) in listed
    assert any(b["shard"] == str(shards[1]) and "truncated" in b["reason"]
               for b in summary["bad_records"])
    assert any("clip.lying" in b["reason"] for b in summary["bad_records"])
    assert any("clip.wide" in b["reason"] for b in summary["bad_records"])
    counters = summary["input_counters"]
    assert counters["framing_errors"] == 1 and counters["bad_records"] >= 3


@pytest.mark.parametrize("damage", ["framing", "records"])
def test_when_nothing_is_usable_the_one_error_line_names_the_shards(tmp_path, capsys, damage):
    records = tmp_path / "records"
    records.mkdir()
    names = ["train-mel-00000-of-00002.tfrecord", "train-mel-00001-of-00002.tfrecord"]
    for i, name in enumerate(names):
        if damage == "framing":
            (records / name).write_bytes(b"\x07" * 64)
        else:
            nan = np.full((4, 8), np.nan, np.float32)
            (records / name).write_bytes(_hand_record(f"clip{i}", nan))
    capsys.readouterr()
    code = main(_records_args(tmp_path / "w", records, _tokenizer_dir(tmp_path)))
    err = capsys.readouterr().err
    assert code == 2, err
    errors = _error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    assert all(name in errors[0] for name in names), errors[0]
    assert ("@ byte 0: corrupt length" if damage == "framing" else "non-finite") in errors[0]


def test_nan_stop_names_the_step_clips_and_skip_clips_passes_it(tmp_path, capsys):
    root = tmp_path / "data"
    make_inputs(root, 12, frames=(4, 4), dim=8, qa_per_clip=(1, 1), long_fraction=0.0)
    poisoned = "clip.0007-start0.000"
    huge = np.full((4, 8), 3e38, np.float32)  # finite (the reader passes it), overflows the model
    huge[:, ::2] *= -1
    np.save(root / "embeddings" / f"{poisoned}.npy", huge)
    records = root / "records"
    write_records(root / "annotations.jsonl", [root / "qa.jsonl"], root / "embeddings", records,
                  "train", shard_size=6, embedding_dtype="float32")
    workdir = tmp_path / "w"
    args = _records_args(workdir, records, _tokenizer_dir(tmp_path), steps=6)
    capsys.readouterr()
    assert main(args) == EXIT_NAN
    err = capsys.readouterr().err
    errors = _error_lines(err)
    assert len(errors) == 1 and "loss is nan at step" in errors[0], err
    assert poisoned in errors[0] and ".tfrecord @ byte" in errors[0]
    clips_file = next(workdir.glob("nan_step_*_clips.txt"))
    assert f"--config.data.skip_clips=@{clips_file}" in errors[0]
    assert poisoned in clips_file.read_text()
    nan_step = int(clips_file.name.split("_")[2])

    # With the documented skip the rerun passes that step.
    assert main([*args, f"--config.data.skip_clips=@{clips_file}"]) == 0
    rows = _metrics(workdir)
    assert [r["step"] for r in rows] == list(range(1, 7)) and nan_step <= 6
    assert all(np.isfinite(r["loss"]) for r in rows)
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert poisoned in summary["skipped_clips"]
    assert summary["input_counters"]["skipped_clip_examples"] >= 1
