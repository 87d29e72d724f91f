"""`python -m data_prep instruct` in real subprocesses: SIGKILL + rerun, key hygiene, offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from fake_openai_server import FakeChatServer, FaultSchedule
from instruct_helpers import SECRET_KEY, make_records, qa_reply, write_jsonl

from data_prep.stages.instruct import main as instruct_main
from llark_jax.eval.prompts import INSTRUMENTS_PROMPT, KEY_PROMPT, TEMPO_PROMPT

ROOT = Path(__file__).resolve().parents[1]
# Faults that do not change a reply's content, so an interrupted run must end identical.
TRANSIENT = ("rate_limit", "server_error", "hang", "prose", "non_json")


def _command(metadata: Path, output: Path, base_url: str) -> list[str]:
    return [sys.executable, "-m", "data_prep", "instruct", "--metadata", str(metadata),
            "--task", "mir", "--dataset", "fma", "--output", str(output), "--base-url", base_url,
            "--concurrency", "4", "--timeout", "0.5", "--backoff-base", "0.01",
            "--backoff-max", "0.05", "--max-attempts", "10"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
    return {**env, "OPENAI_API_KEY": SECRET_KEY, "PYTHONPATH": str(ROOT)}


def _ok_keys(log: Path) -> list[str]:
    rows = []
    for line in log.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the line the kill cut in half
            continue
    return [r["key"] for r in rows if r["status"] == "ok"]


def test_sigkill_and_rerun_equals_uninterrupted_run_and_key_never_written(tmp_path):
    metadata = write_jsonl(tmp_path / "clips.jsonl", make_records(60))
    server = FakeChatServer(qa_reply, FaultSchedule.random(0.35, seed=7, kinds=TRANSIENT),
                            retry_after_s=0.02, hang_s=2.0, delay_s=0.08, expected_key=SECRET_KEY)
    with server:
        full = tmp_path / "full" / "qa.jsonl"
        reference = subprocess.run(_command(metadata, full, server.base_url), env=_env(),
                                   capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert reference.returncode == 0, reference.stderr[-2000:]

        resumed = tmp_path / "resumed" / "qa.jsonl"
        log = resumed.with_name("qa.jsonl.responses.jsonl")
        victim = subprocess.Popen(_command(metadata, resumed, server.base_url), env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and victim.poll() is None:
            if log.exists() and len(_ok_keys(log)) >= 12:
                break
            time.sleep(0.01)
        assert victim.poll() is None, "the run finished before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim_out, victim_err = victim.communicate(timeout=30)
        done_before_rerun = len(_ok_keys(log))
        assert 12 <= done_before_rerun < 60 and not resumed.exists()

        rerun = subprocess.run(_command(metadata, resumed, server.base_url), env=_env(),
                               capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert rerun.returncode == 0, rerun.stderr[-2000:]

    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert summary["already_done"] == done_before_rerun
    assert summary["succeeded"] == 60 - done_before_rerun
    assert resumed.read_text() == full.read_text()  # the final set equals the uninterrupted run
    ok_keys = _ok_keys(log)
    assert len(ok_keys) == len(set(ok_keys)) == 60  # nothing lost, nothing duplicated

    produced = [reference.stdout, reference.stderr, rerun.stdout, rerun.stderr,
                victim_out.decode(), victim_err.decode()]
    produced += [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
    assert not any(SECRET_KEY in text for text in produced)


def test_offline_backend_without_key_writes_eval_prompt_pairs(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    clips = [{"clip_id": f"demo{i}", "tempo": 100 + i, "key": "A minor", "time_signature": "3/4",
              "instruments": ["piano", "bass", "drums"], "chords": ["Am", "F", "C", "G"]}
             for i in range(5)] + [{"clip_id": "empty"}]
    metadata = write_jsonl(tmp_path / "demo.jsonl", clips)
    output = tmp_path / "qa.jsonl"
    argv = ["--metadata", str(metadata), "--task", "mir", "--dataset", "demo",
            "--output", str(output)]
    assert instruct_main(argv) == 1  # the clip without fields is an outstanding failure
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["clip_id"] for r in rows] == [f"demo{i}" for i in range(5)]
    for i, row in enumerate(rows):
        answers = {p["question"]: p["answer"] for p in row["qa"]}
        assert answers[KEY_PROMPT] == "The key is A minor."
        assert answers[TEMPO_PROMPT] == f"The tempo is about {100 + i} BPM."
        assert answers[INSTRUMENTS_PROMPT] == "piano, bass, drums"
    report = json.loads(output.with_name("qa.jsonl.report.json").read_text())
    assert report["backend"] == "offline"
    assert report["outstanding_failures"] == {"NoUsablePairsError": 1}
    assert report["filter"]["dropped"] == 0
    first = output.read_text()
    assert instruct_main(argv) == 1  # rerun: everything done already, identical output
    assert output.read_text() == first


def test_provided_captions_become_one_seeded_pair_each(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    rows = [{"ytid": f"yt{i}", "caption": f"A calm piano melody number {i}."} for i in range(4)]
    metadata = write_jsonl(tmp_path / "musiccaps.jsonl", rows + [{"ytid": "no-caption"}])
    with open(metadata, "a") as f:
        f.write('{"ytid": "torn\n')
    output = tmp_path / "qa.jsonl"
    argv = ["--metadata", str(metadata), "--task", "captioning", "--dataset", "musiccaps",
            "--output", str(output)]
    assert instruct_main(argv) == 1  # one clip without caption, one bad line: reported
    out = [json.loads(line) for line in output.read_text().splitlines()]
    assert [len(r["qa"]) for r in out] == [1, 1, 1, 1]
    assert all(r["qa"][0]["task"] == "captioning" for r in out)
    assert [r["qa"][0]["answer"] for r in out] == [r["caption"] for r in rows]
    report = json.loads(output.with_name("qa.jsonl.report.json").read_text())
    assert report["backend"] == "provided"
    assert report["input_problems"] == {"invalid_json": 1}
    assert report["outstanding_failures"] == {"KeyError": 1}
