"""The fault-tolerant client and job runner against a real local Chat Completions server."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest
from fake_openai_server import FAULT_KINDS, FakeChatServer, FaultSchedule
from instruct_helpers import SECRET_KEY, make_records, metadata_of, qa_reply, write_jsonl

from data_prep.instruct.backends import OpenAIBackend
from data_prep.instruct.parsing import parse_qa_reply
from data_prep.instruct.prompts import EXCLUDED_FIELDS
from data_prep.stages import instruct as cli
from data_prep.stages.instruct import ResultLog, run_job, select_sample
from llark_jax.llm.client import ChatClient, RequestFailedError, RetryPolicy, request_once

FAST = RetryPolicy(max_attempts=10, timeout_s=0.3, backoff_base_s=0.01, backoff_max_s=0.05)
MESSAGES = [{"role": "user", "content": json.dumps([{"tempo_in_beats_per_minute_madmom": 90,
                                                     "key": "C major"}])}]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_200_clips_complete_under_heavy_faults(tmp_path):
    records = [(r["clip_id"], r) for r in make_records(200)]
    server = FakeChatServer(qa_reply, FaultSchedule.random(0.4, seed=3), retry_after_s=0.02,
                            hang_s=3.0, expected_key=SECRET_KEY)
    with server:
        client = ChatClient(base_url=server.base_url, policy=FAST, concurrency=16, seed=0)
        backend = OpenAIBackend("mir", "fma", client, None, seed=0)
        report = run_job(records, backend, task="mir", dataset="fma", output=tmp_path / "qa.jsonl",
                         log_path=tmp_path / "log.jsonl", concurrency=16)
    calls = server.calls
    faults = Counter(c.fault for c in calls)
    assert set(faults) >= set(FAULT_KINDS), faults
    assert sum(n for kind, n in faults.items() if kind) >= 0.3 * len(calls)
    assert report["succeeded"] == 200 and report["failed"] == 0
    # On a loaded machine an attempt can time out before reaching the server, hence <=.
    assert len(calls) <= report["requests"]["total"] <= 200 * FAST.max_attempts
    assert report["requests"]["max_per_clip"] <= FAST.max_attempts
    assert {"rate_limit", "http_500", "timeout", "parse"} <= set(report["retries_by_reason"])

    log_rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert len(log_rows) == 200 and len({r["key"] for r in log_rows}) == 200
    out = [json.loads(line) for line in (tmp_path / "qa.jsonl").read_text().splitlines()]
    assert [r["clip_id"] for r in out] == [clip_id for clip_id, _ in records]
    for row, (_, record) in zip(out, records, strict=True):
        # Each clip got its own answer, and the "about the album" pair was filtered out.
        tempo = record["tempo_in_beats_per_minute_madmom"]
        assert row["qa"][0]["answer"] == f"About {tempo:g} BPM."
        assert all("album" not in pair["question"] for pair in row["qa"])
    # Truncated replies were repaired to their complete pairs (often losing the album pair).
    assert sum(bool(r.get("repaired")) for r in log_rows) > 0
    n_album = sum(any("album" in p["question"] for p in r["qa"]) for r in log_rows)
    assert report["filter"]["by_phrase"]["question: about the album"] == n_album >= 150
    for call in calls:  # ids, paths, crop times and artist never reach the model
        assert call.authorized
        assert not set(metadata_of(call.request)) & EXCLUDED_FIELDS


def test_retry_after_is_honoured_and_attempts_are_bounded():
    delays: list[float] = []

    async def record_sleep(seconds: float) -> None:
        delays.append(seconds)

    async def scenario(base_url: str):
        policy = RetryPolicy(max_attempts=3, timeout_s=1.0, backoff_base_s=0.001)
        client = ChatClient(base_url=base_url, policy=policy, sleep=record_sleep)
        ok = await client.request(MESSAGES, model="gpt-3.5-turbo", parse=parse_qa_reply)
        with pytest.raises(RequestFailedError) as failed:
            await client.request(MESSAGES, model="gpt-3.5-turbo", parse=parse_qa_reply)
        await client.close()
        return ok, failed.value

    schedule = FaultSchedule.sequence(["rate_limit", "rate_limit", None] + ["server_error"] * 3)
    with FakeChatServer(qa_reply, schedule, retry_after_s=0.7) as server:
        ok, failure = asyncio.run(scenario(server.base_url))
        assert len(server.calls) == 6
    assert ok.attempts == 3 and ok.retried == {"rate_limit": 2}
    assert delays[:2] == [0.7, 0.7]  # Retry-After beats the 1 ms backoff
    assert failure.reason == "http_500" and failure.attempts == 3
    assert len(delays) == 4  # no sleep after the last attempt


def test_non_retryable_error_fails_at_once_without_leaking_the_key():
    with FakeChatServer(qa_reply, expected_key="sk-some-other-key") as server:
        with pytest.raises(RequestFailedError) as failed:
            request_once(MESSAGES, model="gpt-4", parse=parse_qa_reply, base_url=server.base_url,
                         policy=FAST)
        assert len(server.calls) == 1
    assert failed.value.reason == "http_401" and failed.value.attempts == 1
    assert SECRET_KEY not in str(failed.value)


def test_request_once_returns_parsed_prose_wrapped_json():
    with FakeChatServer(qa_reply, FaultSchedule.sequence(["prose"])) as server:
        result = request_once(MESSAGES, model="gpt-4", parse=parse_qa_reply,
                              base_url=server.base_url, policy=FAST)
    assert result.value["qa"][0]["answer"] == "About 90 BPM."
    assert result.usage["prompt_tokens"] == 100


def test_result_log_survives_a_torn_last_line(tmp_path):
    log = ResultLog(tmp_path / "log.jsonl")
    with log:
        log.append({"key": "a", "status": "failed", "reason": "timeout"})
        log.append({"key": "a", "status": "ok", "qa": []})
    with open(log.path, "a") as f:
        f.write('{"key": "b", "status": "o')  # what a SIGKILL mid-write leaves
    with log:
        log.append({"key": "a", "status": "failed", "reason": "late"})
        log.append({"key": "c", "status": "ok", "qa": []})
    rows = log.read()
    assert log.torn_lines == 1
    assert rows["a"]["status"] == "ok" and rows["c"]["status"] == "ok" and "b" not in rows


def test_reasoning_cap_is_a_seeded_sample(tmp_path, monkeypatch):
    records = [(f"c{i}", {}) for i in range(50)]
    sample = select_sample(records, 10, seed=4)
    assert sample == select_sample(records, 10, seed=4) != select_sample(records, 10, seed=5)
    assert len(sample) == 10 and sample == sorted(sample, key=records.index)
    assert select_sample(records, None, seed=4) == records

    monkeypatch.setattr(cli, "REASONING_TRACK_CAP", 6)
    metadata = write_jsonl(tmp_path / "m.jsonl", make_records(20))
    with FakeChatServer(qa_reply) as server:
        argv = ["--metadata", str(metadata), "--task", "reasoning", "--dataset", "fma",
                "--output", str(tmp_path / "qa.jsonl"), "--base-url", server.base_url]
        assert cli.main(argv) == 0
        assert {c.request["model"] for c in server.calls} == {"gpt-4"}
    report = json.loads((tmp_path / "qa.jsonl.report.json").read_text())
    assert report["records_read"] == 20 and report["selected"] == report["succeeded"] == 6
    assert report["estimated_cost_usd_all_runs"] > 0


def test_any_error_from_a_callers_parser_is_retried():
    def judge_parse(text: str) -> str:
        return json.loads(text)[0]["verdict"]  # KeyError on the QA reply, then succeeds

    replies = iter([qa_reply({"messages": MESSAGES}), json.dumps([{"verdict": "A"}])])
    with FakeChatServer(lambda request: next(replies)) as server:
        result = request_once(MESSAGES, model="gpt-4", parse=judge_parse,
                              base_url=server.base_url, policy=FAST)
    assert result.value == "A" and result.attempts == 2 and result.retried == {"parse": 1}
