"""Serving under load: p50/p99 latency, throughput and server memory at 1, 8 and 32 clients.

    python bench/serve_load.py [--model runs/demo/model] [--clients 1,8,32]
        [--requests-per-client 4] [--max-tokens 32] [--batch-size 8] [--json out.json]

Starts `python -m llark_jax serve` on 127.0.0.1 (a free port) with the model directory, warms it
up (bursts of 1, 2, 4 and 8 concurrent requests, so the row buckets are compiled before timing),
then for each client count runs that many concurrent clients, each sending
`--requests-per-client` chat requests one after another (a 10 s demo clip as base64 audio + a
question, greedy, `max_tokens` = `--max-tokens`, non-streamed). Latency is send -> whole answer
per request; the server's resident memory (VmRSS of its process) is sampled every 50 ms, and its
peak (VmHWM) read at the end. `--repo A,B --labels after,before` starts one server per checkout
and runs each level on each in turn (interleaved, so changing background load hits both alike).
/healthz gives the batches, rows and XLA compilations of each
level (compilations during a level mean its latency includes compile time). `--long-prompt-chars N`
adds, after the levels, one request with N characters of text (no audio) sent alone three times
(the first compiles): its latency and the rise of the server's RSS over the RSS before it (a
lone request used to be padded to `--batch-size` copies). The table printed at the end is the one
in docs/serving.md. Not a test: numbers depend on the machine and its load (both are reported).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUESTION = "What is the key of this song?"


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Server:
    """`python -m llark_jax serve` on 127.0.0.1:<free port>, run from `repo`."""

    def __init__(self, repo: Path, model: Path, batch_size: int, log_path: Path):
        cmd = [sys.executable, "-m", "llark_jax", "serve", "--checkpoint", str(model),
               "--host", "127.0.0.1", "--port", "0", "--batch-size", str(batch_size),
               "--max-queue", "1024", "--request-timeout", "1800"]
        self.log = open(log_path, "w")
        env = {**os.environ, "PYTHONPATH": str(repo)}
        self.process = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, env=env)
        line = ""
        while not line.startswith("serving "):
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise SystemExit(f"the server did not start; see {log_path}")
        self.url = line.split()[1]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(120)
        self.log.close()


async def run_level(session, server: Server, body: dict, clients: int,
                    per_client: int) -> dict:
    """`clients` concurrent loops of `per_client` requests; latency and memory of the level."""
    import aiohttp

    latencies: list[float] = []
    tokens: list[int] = []
    prompt_tokens: list[int] = []
    rss: list[int] = []
    done = asyncio.Event()

    async def sample_memory() -> None:
        while not done.is_set():
            rss.append(status_kb(server.process.pid, "VmRSS"))
            try:
                await asyncio.wait_for(done.wait(), 0.05)
            except TimeoutError:
                pass

    async def client() -> None:
        for _ in range(per_client):
            began = time.perf_counter()
            async with session.post(server.url + "/v1/chat/completions", json=body,
                                    timeout=aiohttp.ClientTimeout(total=1800)) as response:
                reply = await response.json()
                if response.status != 200:
                    raise SystemExit(f"HTTP {response.status}: {reply}")
            latencies.append(time.perf_counter() - began)
            tokens.append(reply["usage"]["completion_tokens"])
            prompt_tokens.append(reply["usage"]["prompt_tokens"])

    before = await health(session, server)
    sampler = asyncio.create_task(sample_memory())
    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - began
    done.set()
    await sampler
    after = await health(session, server)
    ms = np.asarray(latencies) * 1000
    return {
        "clients": clients, "requests": len(latencies), "wall_s": round(wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "mean_ms": round(float(ms.mean()), 1), "max_ms": round(float(ms.max()), 1),
        "requests_per_s": round(len(latencies) / wall, 3),
        "tokens_per_s": round(sum(tokens) / wall, 1),
        "mean_completion_tokens": round(float(np.mean(tokens)), 1),
        "mean_prompt_tokens": round(float(np.mean(prompt_tokens)), 1),
        "peak_rss_mb": round(max(rss) / 1024, 1), "mean_rss_mb": round(np.mean(rss) / 1024, 1),
        "batches": after["batches"] - before["batches"],
        "rows": after["rows"] - before["rows"],
        # absent from older servers' /healthz (those pad every batch to --batch-size rows)
        "computed_rows": (after["computed_rows"] - before["computed_rows"]
                          if "computed_rows" in after else None),
        "compiles": after["compiles"] - before["compiles"] if "compiles" in after else None,
    }  # fmt: skip


async def health(session, server: Server) -> dict:
    async with session.get(server.url + "/healthz") as response:
        return await response.json()


def long_prompt_body(model_name: str, chars: int, max_tokens: int) -> dict:
    text = (f"{QUESTION} Describe the harmony, rhythm and timbre in detail. "
            * (chars // 60 + 1))[:chars]
    return {"model": model_name, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": text}]}


async def bench(args: argparse.Namespace) -> dict:
    """Every repo gets its own server; the levels run interleaved across them (level 1 on each,
    then level 8 on each, ...), so changing background load hits all alike."""
    import aiohttp

    clip = Path(args.clip) if args.clip else sorted((REPO / "runs/demo/clips").glob("*.wav"))[0]
    audio = base64.b64encode(clip.read_bytes()).decode()
    repos = [Path(r) for r in args.repo.split(",")]
    labels = args.labels.split(",") if args.labels else [r.name for r in repos]
    servers: list[Server] = []
    results = {label: {"repo": str(repo), "levels": []} for label, repo in zip(labels, repos,
                                                                                strict=True)}
    try:
        for label, repo in zip(labels, repos, strict=True):
            log = Path(args.log or "/tmp/serve_load").with_suffix(f".{label}.log")
            servers.append(Server(repo, Path(args.model), args.batch_size, log))
            results[label]["rss_after_load_mb"] = round(
                status_kb(servers[-1].process.pid, "VmRSS") / 1024, 1)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async with session.get(servers[0].url + "/v1/models") as response:
                model_name = (await response.json())["data"][0]["id"]
            body = {"model": model_name, "max_tokens": args.max_tokens, "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": QUESTION},
                    {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}]}
            for label, server in zip(labels, servers, strict=True):
                warm_began = time.perf_counter()
                for burst in (1, 2, 4, 8, 8, 4, 2, 1):
                    if burst <= args.batch_size:
                        await run_level(session, server, body, burst, 1)
                results[label]["warmup_s"] = round(time.perf_counter() - warm_began, 1)
            for clients in args.clients:
                for label, server in zip(labels, servers, strict=True):
                    load = os.getloadavg()[0]
                    level = await run_level(session, server, body, clients,
                                            args.requests_per_client)
                    level["load_before"] = round(load, 2)
                    results[label]["levels"].append(level)
                    print(label, json.dumps(level), flush=True)
            if args.long_prompt_chars:
                long_body = long_prompt_body(model_name, args.long_prompt_chars, args.max_tokens)
                for label, server in zip(labels, servers, strict=True):
                    base = status_kb(server.process.pid, "VmRSS") / 1024
                    runs = [await run_level(session, server, long_body, 1, 1) for _ in range(3)]
                    peak = max(r["peak_rss_mb"] for r in runs)
                    results[label]["long_prompt"] = {
                        "chars": args.long_prompt_chars,
                        "prompt_tokens": runs[0]["mean_prompt_tokens"],
                        "first_s": runs[0]["max_ms"] / 1000,
                        "warm_s": [r["max_ms"] / 1000 for r in runs[1:]],
                        "rss_before_mb": round(base, 1), "peak_rss_mb": peak,
                        "rise_mb": round(peak - base, 1),
                        "computed_rows": [r["computed_rows"] for r in runs]}
                    print(label, json.dumps(results[label]["long_prompt"]), flush=True)
    finally:
        for label, server in zip(labels, servers, strict=False):
            results[label]["server_peak_rss_mb"] = round(
                status_kb(server.process.pid, "VmHWM") / 1024, 1)
            server.stop()
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    return {"model": str(args.model), "clip": clip.name, "max_tokens": args.max_tokens,
            "batch_size": args.batch_size, "requests_per_client": args.requests_per_client,
            "cpu": cpu, "cores": len(os.sched_getaffinity(0)),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "servers": results}


def markdown(result: dict) -> str:
    rows = ["| server | clients | requests | p50 (s) | p99 (s) | req/s | batches (rows run) | "
            "server RSS peak (MB) | load avg before |", "|---|---|---|---|---|---|---|---|---|"]
    for label, server in result["servers"].items():
        for lv in server["levels"]:
            rows.append(f"| {label} | {lv['clients']} | {lv['requests']} | "
                        f"{lv['p50_ms'] / 1000:.2f} | {lv['p99_ms'] / 1000:.2f} | "
                        f"{lv['requests_per_s']:.2f} | {lv['batches']} "
                        f"({lv['computed_rows'] or lv['batches'] * result['batch_size']}) | "
                        f"{lv['peak_rss_mb']:.0f} | {lv['load_before']:.2f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "runs" / "demo" / "model"))
    parser.add_argument("--repo", default=str(REPO),
                        help="checkout(s) the server runs from, comma-separated (interleaved)")
    parser.add_argument("--labels", default=None, help="names of the --repo servers")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--long-prompt-chars", type=int, default=0)
    parser.add_argument("--clip", default=None, help="audio file (default: the first demo clip)")
    parser.add_argument("--log", default=None,
                        help="server log prefix (default /tmp/serve_load: .LABEL.log)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    result = asyncio.run(bench(args))
    text = json.dumps(result, indent=1)
    print(text)
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
