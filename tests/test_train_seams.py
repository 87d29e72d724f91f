"""Training-CLI seams: what `train` decides before the first step.

- fine-tuning (`train.init_from`) keeps the source model's feature pipeline and statistics, and
  records of another encoder or width, or a config asking for another pipeline, stop in one line;
- `data.task_weights` that weight none of the records' tasks name both sides and the override;
  the `data.audio_frames` advice is the longest clip read, not the first;
- every config mistake found without training stops before the workdir is touched: `--restart`
  moves nothing, a fresh workdir is not even created;
- `train.model_dir` that could not be written (no tokenizer) stops before training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from records_helpers import make_inputs
from tokenizer_fixtures import make_llark_tokenizer
from train_helpers import TINY

from data_prep.records import write_records
from llark_jax.checkpoints.model_dir import MANIFEST, load_model
from llark_jax.data.shards import ShardSource
from llark_jax.train.loop import main


def _args(workdir: Path, *extra: str, steps: int = 4) -> list[str]:
    return ["--config", str(TINY), "--workdir", str(workdir), f"--config.train.steps={steps}",
            "--config.train.checkpoint_every=2", "--config.metrics.tensorboard=False", *extra]


def _with_tokenizer(tokenizer: Path) -> list[str]:
    """configs/tiny.py overrides for a real tokenizer (its LLark token ids, a vocabulary that
    holds it)."""
    return [f"--config.model.tokenizer={tokenizer}", "--config.model.llama.vocab_size=640",
            "--config.model.audio_start_id=-1", "--config.model.audio_patch_id=-1",
            "--config.model.audio_end_id=-1"]


def _records_args(workdir: Path, records: Path, tokenizer: Path, *extra: str,
                  steps: int = 2) -> list[str]:
    return _args(workdir, "--config.data.source=tfrecord",
                 f"--config.data.path={records}/*.tfrecord", *_with_tokenizer(tokenizer),
                 "--config.model.audio_dim=8", "--config.data.seq_len=96",
                 "--config.optim.warmup_steps=0", *extra, steps=steps)


def _tokenizer_dir(root: Path) -> Path:
    path = root / "tokenizer"
    if not path.is_dir():
        make_llark_tokenizer().save_pretrained(str(path))
    return path


def _write_records(root: Path, *, seed: int = 0, encoder: str = "mel",
                   frames: list[int] | None = None) -> Path:
    """12 one-question clips of 8-dim features (4 frames each, or `frames[i]` for clip i)."""
    make_inputs(root, 12, frames=(4, 4), dim=8, qa_per_clip=(1, 1), long_fraction=0.0,
                seed=seed)
    rng = np.random.default_rng(seed)
    for i, n in enumerate(frames or []):
        np.save(root / "embeddings" / f"clip.{i:04d}-start0.000.npy",
                rng.standard_normal((n, 8)).astype(np.float32))
    for sidecar in (root / "embeddings").glob("*.json"):
        sidecar.write_text(json.dumps({"encoder": encoder}))
    records = root / "records"
    write_records(root / "annotations.jsonl", [root / "qa.jsonl"], root / "embeddings", records,
                  "train", shard_size=6, embedding_dtype="float32")
    return records


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err
    errors = _error_lines(err)
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with the sha256 of its bytes ('dir' for folders)."""
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else
                                       hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def _features(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())["features"]


# ------------------------------------------------------------------ F4: fine-tuning features


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> tuple[Path, Path]:
    """(workdir trained 2 steps on standardised features, tokenizer dir)."""
    root = tmp_path_factory.mktemp("source")
    tokenizer = _tokenizer_dir(root)
    workdir = root / "w"
    assert main(_records_args(workdir, _write_records(root / "data"), tokenizer,
                              "--config.data.standardize=True")) == 0
    return workdir, tokenizer


def test_fine_tuning_keeps_the_source_feature_statistics(source_run, tmp_path, caplog):
    source, tokenizer = source_run
    other = _write_records(tmp_path / "other", seed=7)  # same encoder, other statistics
    workdir = tmp_path / "ft"
    args = _records_args(workdir, other, tokenizer, "--config.data.standardize=True",
                         f"--config.train.init_from={source}")
    with caplog.at_level(logging.INFO, logger="llark_jax.train"):
        assert main(args) == 0
    kept = [r.getMessage() for r in caplog.records if "kept" in r.getMessage()]
    assert len(kept) == 1 and str(source) in kept[0], caplog.text
    got, want = _features(workdir), _features(source)
    assert got["mean"] == want["mean"] and got["std"] == want["std"]
    own = np.concatenate([c.embedding for c in _clips(other)]).mean(axis=0)
    assert not np.allclose(own, want["mean"])  # the other records' own statistics differ

    assert main([*args, "--config.train.steps=3"]) == 0  # resumed: still the source's
    assert _features(workdir)["mean"] == want["mean"]


def _clips(records: Path) -> list:
    source = ShardSource([str(records / "*.tfrecord")])
    try:
        return [source.read(i) for i in range(len(source.locations))]
    finally:
        source.close()


@pytest.mark.parametrize("change, expected", [
    ("records:mir", "records hold 8-dim mir features"),
    ("--config.data.feature_pool=2", "data.feature_pool=2 (the source's: 1)"),
    ("--config.data.standardize=False", "data.standardize=False (the source's: True)"),
])
def test_fine_tuning_on_another_feature_pipeline_is_one_error_line(source_run, tmp_path, capsys,
                                                                    change, expected):
    source, tokenizer = source_run
    encoder = change.split(":")[1] if change.startswith("records:") else "mel"
    records = _write_records(tmp_path / "other", seed=7, encoder=encoder)
    extra = [] if change.startswith("records:") else [change]
    workdir = tmp_path / "ft"
    capsys.readouterr()
    code = main(_records_args(workdir, records, tokenizer, "--config.data.standardize=True",
                              f"--config.train.init_from={source}", *extra))
    assert code == 2
    line = _one_error(capsys)
    assert expected in line and f"train.init_from={source}" in line, line
    assert not workdir.exists()


# ------------------------------------------------------------------ F5: task weights, frames


def test_task_weights_of_no_record_task_name_both_sides_and_the_override(tmp_path, capsys):
    records = _write_records(tmp_path / "data")  # every pair's task is "mir"
    tokenizer = _tokenizer_dir(tmp_path)
    workdir = tmp_path / "w"
    weights = "--config.data.task_weights={'key': 0.6, 'tempo': 0.4}"
    capsys.readouterr()
    assert main(_records_args(workdir, records, tokenizer, weights)) == 2
    line = _one_error(capsys)
    assert "{'key': 0.6, 'tempo': 0.4}" in line and "{'mir': 12}" in line, line
    override = "--config.data.task_weights=\"{'mir': 1.0}\""
    assert override in line, line
    assert not workdir.exists()

    # The advised override trains.
    assert main(_records_args(workdir, records, tokenizer,
                              override.replace('"', ""), steps=1)) == 0


def test_task_counts_are_those_of_the_shards_read_and_weights_are_not_negative(tmp_path,
                                                                              capsys):
    """`data.path=DIR/train-*` beside an eval split: the weights share the training split's
    examples (the eval index was counted too); a negative weight is an error line."""
    from llark_jax.data.shards import ShardSource

    records = _write_records(tmp_path / "data")  # 12 train clips, one "mir" pair each
    root = tmp_path / "data"
    write_records(root / "annotations.jsonl", [root / "qa.jsonl"], root / "embeddings", records,
                  "eval", shard_size=6, embedding_dtype="float32")  # the same 12 as "eval"
    source = ShardSource([str(records / "train-*.tfrecord")])
    try:
        assert source.task_counts() == {"mir": 12}  # not 24
    finally:
        source.close()
    tokenizer = _tokenizer_dir(tmp_path)
    capsys.readouterr()
    assert main(_records_args(tmp_path / "w", records, tokenizer,
                              "--config.data.task_weights={'mir': 1.0, 'key': -1.0}")) == 2
    assert "data.task_weights: weights are shares of the epoch, >= 0; got {'key': -1.0}" in (
        _one_error(capsys))


def test_audio_frames_advice_is_the_longest_clip_read_not_the_first(tmp_path, capsys):
    frames = [6 + i for i in range(12)]  # the first clip 6 frames, the longest 17
    records = _write_records(tmp_path / "data", frames=frames)
    tokenizer = _tokenizer_dir(tmp_path)
    workdir = tmp_path / "w"
    capsys.readouterr()
    assert main(_records_args(workdir, records, tokenizer)) == 2  # data.audio_frames = 4
    line = _one_error(capsys)
    assert "records hold up to 17 frames" in line, line
    assert "--config.data.audio_frames to at least 17" in line, line

    # Following it no clip is skipped for its length.
    assert main(_records_args(workdir, records, tokenizer, "--config.data.audio_frames=17",
                              "--config.data.seq_len=128")) == 0
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["input_counters"].get("too_many_frames", 0) == 0


# ------------------------------------------------------------------ F6, F7: before any write


def test_a_config_error_with_restart_leaves_the_run_in_place(tmp_path, capsys):
    workdir = tmp_path / "w"
    assert main(_args(workdir)) == 0
    before = _snapshot(workdir)
    capsys.readouterr()
    assert main(_args(workdir, "--config.model.llama.hidden_size=48", "--restart",
                      steps=2)) == 2
    assert "warmup steps 2 must be in" in _one_error(capsys)
    assert _snapshot(workdir) == before  # nothing moved to previous/, no manifest rewritten

    assert main(_args(workdir, steps=6)) == 0  # the original run resumes from step 4
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert json.loads((workdir / MANIFEST).read_text())["config"]["model"]["llama"][
        "hidden_size"] == 32


@pytest.mark.parametrize("extra, expected", [
    (["--config.train.steps=2"], "warmup steps 2 must be in"),
    (["--config.train.micro_steps=3"], "does not split into train.micro_steps"),
    (["--config.train.model_dir={tmp}/model"], "--config.model.tokenizer"),
    (["--config.train.model_dir={tmp}/w", "TOKENIZER"], "is the workdir"),
    (["--config.train.init_from={tmp}/nothing"], "train.init_from: no checkpoint under"),
    (["--config.model.tokenizer={tok}", "--config.model.audio_start_id=-1",
      "--config.model.audio_patch_id=-1", "--config.model.audio_end_id=-1"],
     "--config.model.llama.vocab_size=604 or more"),
])
def test_a_config_error_writes_nothing_into_a_fresh_workdir(tmp_path, capsys, extra, expected):
    tokenizer = _tokenizer_dir(tmp_path)
    extra = [e.replace("{tmp}", str(tmp_path)).replace("{tok}", str(tokenizer)) for e in extra]
    if "TOKENIZER" in extra:
        extra = [e for e in extra if e != "TOKENIZER"] + _with_tokenizer(tokenizer)
    capsys.readouterr()
    assert main(_args(tmp_path / "w", *extra)) == 2
    line = _one_error(capsys)
    assert expected in line, line
    assert not (tmp_path / "w").exists() and not (tmp_path / "model").exists()


def test_model_dir_without_a_tokenizer_stops_before_training_and_the_advice_works(tmp_path,
                                                                                  capsys):
    model_dir = tmp_path / "model"
    capsys.readouterr()
    assert main(_args(tmp_path / "w", f"--config.train.model_dir={model_dir}")) == 2
    line = _one_error(capsys)
    assert "train.model_dir" in line and "drop train.model_dir" in line, line
    assert not (tmp_path / "w").exists()

    tokenizer = _tokenizer_dir(tmp_path)
    assert main(_args(tmp_path / "w", f"--config.train.model_dir={model_dir}",
                      *_with_tokenizer(tokenizer), steps=3)) == 0
    assert load_model(model_dir).step == 3
