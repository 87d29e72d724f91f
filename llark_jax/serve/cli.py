"""`python -m llark_jax serve --checkpoint CKPT [--host 127.0.0.1 --port 8000]`.

Loads the model once (a model directory or a training workdir, `llark_jax.checkpoints.model_dir`),
then serves the OpenAI-compatible API and the chat page (`llark_jax.serve.app`) until SIGINT or
SIGTERM. `--port 0` picks a free port.
The line `serving http://HOST:PORT` is printed (and flushed) once the socket is bound. Binding a
host that is not a loopback address without `--api-key-env` logs a WARNING (anyone who can reach
the port can use the model).
On a signal the server stops accepting connections, lets queued and running batches finish
(up to `--request-timeout` seconds) and exits with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import logging
import os
import signal
import sys

from llark_jax import errors
from llark_jax.argtypes import non_negative_float, port, positive_float, positive_int
from llark_jax.errors import UserError
from llark_jax.infer.windows import SPANS
from llark_jax.serve.audio_input import AudioLimits

log = logging.getLogger("llark_jax.serve")


def parse_args(argv: list[str]) -> argparse.Namespace:
    limits = AudioLimits()
    p = argparse.ArgumentParser(prog="python -m llark_jax serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="model directory or training workdir (docs/serving.md)")
    p.add_argument("--tokenizer", default=None,
                   help="HF tokenizer dir (only for a workdir trained without one)")
    p.add_argument("--system-prompt", default=None, help="replaces the trained system prompt")
    p.add_argument("--model-name", default=None, help="model id clients must send")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000, help="0 = any free port")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer $VAR' on /v1/* (VAR must be set)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="rows per compiled batch")
    p.add_argument("--batch-wait-ms", type=non_negative_float, default=20.0,
                   help="how long the first request of a batch waits for company")
    p.add_argument("--max-queue", type=positive_int, default=256,
                   help="waiting requests before 503")
    p.add_argument("--max-request-mb", type=positive_float, default=16.0, help="request body limit")
    p.add_argument("--max-text-kb", type=positive_float, default=64.0,
                   help="UTF-8 text of all messages of a request, checked before tokenizing")
    p.add_argument("--max-audio-mb", type=positive_float, default=limits.max_audio_bytes / 2**20,
                   help="encoded size limit per clip")
    p.add_argument("--max-audio-seconds", type=positive_float, default=limits.max_audio_seconds,
                   help="audio heard per clip (binds with --span all; a crop is one window)")
    p.add_argument("--span", choices=SPANS, default="crop",
                   help="the part of each clip the model hears: one training window by the "
                        "paper's crop rule (default), or all of it as consecutive windows")
    p.add_argument("--max-clips", type=positive_int, default=4, help="clips per request")
    p.add_argument("--max-files", type=positive_int, default=64,
                   help="uploaded clips kept in memory")
    p.add_argument("--default-max-tokens", type=positive_int, default=256)
    p.add_argument("--max-tokens-limit", type=positive_int, default=1024)
    p.add_argument("--request-timeout", type=positive_float, default=120.0,
                   help="seconds per request")
    return p.parse_args(argv)


def build_state(args: argparse.Namespace):
    """Loads the model and wires engine, featurizer and batcher (imports JAX)."""
    from llark_jax.checkpoints.model_dir import load_model
    from llark_jax.infer.windows import Windowing
    from llark_jax.serve.app import ServerLimits, ServerState
    from llark_jax.serve.audio_input import AudioFeaturizer
    from llark_jax.serve.batcher import MicroBatcher
    from llark_jax.serve.engine import Engine

    api_key = None
    if args.api_key_env:
        api_key = os.environ.get(args.api_key_env)
        if not api_key:
            raise UserError(f"--api-key-env {args.api_key_env}: the variable is unset or empty")
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    served = load_model(args.checkpoint, tokenizer=tokenizer)
    if args.system_prompt is not None:
        served.template = dataclasses.replace(served.template, system_prompt=args.system_prompt)
    served.model_name = args.model_name or served.model_name
    audio_limits = AudioLimits(max_audio_bytes=int(args.max_audio_mb * 2**20),
                               max_audio_seconds=args.max_audio_seconds)
    featurizer = AudioFeaturizer(Windowing.for_model(served), audio_limits, span=args.span)
    audio_dim = served.model.projector.audio_dim
    if featurizer.encoder.dim != audio_dim:
        raise UserError(f"encoder {served.features.encoder!r} gives {featurizer.encoder.dim} "
                         f"features per frame; the model's projector takes {audio_dim}")
    engine = Engine(served, batch_size=args.batch_size,
                    block_tokens=featurizer.windowing.window_tokens,
                    max_new_tokens=args.max_tokens_limit)
    batcher = MicroBatcher(engine.generate, lambda prompt: prompt.batch_key,
                           max_batch=args.batch_size, max_wait_s=args.batch_wait_ms / 1000,
                           max_queue=args.max_queue)
    limits = ServerLimits(
        max_request_bytes=int(args.max_request_mb * 2**20), max_clips=args.max_clips,
        max_files=args.max_files,
        default_max_tokens=args.default_max_tokens, max_tokens_limit=args.max_tokens_limit,
        request_timeout_s=args.request_timeout, max_text_bytes=int(args.max_text_kb * 1024),
    )  # fmt: skip
    log.info("loaded %s (step %d) from %s", served.model_name, served.step, args.checkpoint)
    return ServerState(engine=engine, featurizer=featurizer, batcher=batcher, limits=limits,
                       api_key=api_key)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; False for "", 0.0.0.0, :: and other names."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    from llark_jax.serve.app import make_app

    if not is_loopback(args.host) and not args.api_key_env:
        log.warning("binding %r, which is not a loopback address, without --api-key-env: anyone "
                    "who can reach this port can use the model (pass --api-key-env VAR, or bind "
                    "127.0.0.1)", args.host)
    app = make_app(build_state(args))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=args.request_timeout)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    try:
        await site.start()
    except OSError as err:  # port taken, address not on this host, no permission
        await runner.cleanup()
        raise UserError(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}") from err
    port = runner.addresses[0][1]
    print(f"serving http://{args.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("signal received: finishing queued requests, then exiting")
    await runner.cleanup()


def main(argv: list[str]) -> int:
    from llark_jax.checkpoints.model_dir import ModelDirError

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    for noisy in ("absl", "orbax", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        asyncio.run(serve(args))
    except (ModelDirError, UserError) as err:
        return errors.report(err)
    return 0
