"""`python -m llark_jax infer`: answer questions about audio with a trained LLark checkpoint.

    python -m llark_jax infer --checkpoint W --tokenizer TOK --audio song.mp3 \\
        --question "What is the key of this song?"
    python -m llark_jax infer --checkpoint W --tokenizer TOK --records DIR --output preds.jsonl

`--checkpoint` is a training workdir (`W/checkpoints/<step>`, written by `llark_jax.train`); the
model structure comes from the config saved with the checkpoint. `--tokenizer` is a Hugging Face
tokenizer directory holding the LLark audio tokens with the config's ids (checked); for
`model.source` hf/gguf it defaults to the source's tokenizer extended with the LLark tokens.
`--template` defaults to the config's `data.template`. `--audio` runs the encoder (`--encoder`,
default the config's `data.encoder`, else mel; built with the config's `data.encoder_args`, the
constructor arguments the training features were embedded with) on the raw file, window by window
(`--window-frames`, default the config's `data.audio_frames`); `--records` answers every question
of the TFRecord shards, resumably.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from llark_jax.infer.generate import SamplingConfig


def load_checkpoint(workdir: str | Path, step: int | None = None) -> tuple[Any, Any, int]:
    """(LLark model, config, step) from a training workdir (newest step unless `step`).

    Only the model (params + other model state) is restored, on the config's mesh; the
    optimizer state saved with it is never read."""
    import jax
    import ml_collections
    import orbax.checkpoint as ocp
    from flax import nnx

    from llark_jax.train.checkpoint import TrainCheckpointer
    from llark_jax.train.mesh import make_mesh, rules_for
    from llark_jax.train.model_setup import model_fn
    from llark_jax.train.sharded_init import abstract_model, tree_shardings

    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"--checkpoint: no checkpoints directory under {workdir}")
    checkpointer = TrainCheckpointer(directory, keep=1_000_000, async_save=False)
    try:
        steps = checkpointer.steps()
        if not steps or (step is not None and step not in steps):
            raise FileNotFoundError(
                f"--checkpoint: step {step or 'any'} not in {directory} {steps}"
            )
        step = steps[-1] if step is None else step
        manager = checkpointer.manager
        saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        config = ml_collections.ConfigDict(dict(saved["config"]))
        graphdef, params, rest = abstract_model(model_fn(config.model, config.seed))
        abstract = {"params": params, "rest": rest}
        shardings = tree_shardings(abstract, make_mesh(config.mesh.to_dict()),
                                   rules_for(config.sharding_rules))
        abstract = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )
        state = checkpointer.restore_subtrees(step, abstract)
        model = nnx.merge(graphdef, state["params"], state["rest"])
    finally:
        checkpointer.close()
    return model, config, step


def load_tokenizer(path: str | None, config: Any, model: Any) -> Any:
    """`path`'s tokenizer, else the checkpoint's extended tokenizer (hf/gguf sources, rebuilt by
    `llark_jax.train.pretrained.llark_tokenizer`); audio token ids checked against the model."""
    from llark_jax.data.conversation import AudioTokenIds

    if path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
    elif config.model.source in ("hf", "gguf"):
        from llark_jax.train.pretrained import llark_tokenizer

        tokenizer = llark_tokenizer(config.model)
    else:
        raise ValueError(f"--tokenizer is required for model.source {config.model.source!r}")
    ids = AudioTokenIds.from_tokenizer(tokenizer)
    expected = AudioTokenIds(model.audio_start_id, model.audio_patch_id, model.audio_end_id)
    if ids != expected:
        raise ValueError(f"tokenizer {path} has audio token ids {ids}, the model uses {expected}")
    return tokenizer


def config_encoder(config: Any, name: str | None = None) -> tuple[str, dict[str, Any]]:
    """(encoder name, constructor kwargs) that reproduce the training features.

    `name` (a command-line override) else `config.data.encoder` (mel when absent); the config's
    `data.encoder_args` (e.g. MERT's `frame_rate=group325, layers=mean`) apply only to the
    config's own encoder.
    """
    data = config.get("data") or {}
    configured = data.get("encoder", "mel")
    name = name or configured
    args = data.get("encoder_args") if name == configured else None
    return name, dict(args.to_dict() if hasattr(args, "to_dict") else args or {})


def encode_audio_file(path: str, encoder_name: str, window_frames: int,
                      encoder_args: dict[str, Any] | None = None) -> list:
    """Frames [T_i, D] of each consecutive window of the file (encoder run per window)."""
    from data_prep.audio import SAMPLE_RATE, load_audio, resample
    from data_prep.encoders import get_encoder
    from llark_jax.infer.answer import split_waveform

    encoder = get_encoder(encoder_name, **(encoder_args or {}))
    waveform = resample(load_audio(path), SAMPLE_RATE, encoder.sample_rate)
    window_samples = int(round(window_frames / encoder.frame_rate_hz * encoder.sample_rate))
    return encoder.encode_batch(split_waveform(waveform, window_samples))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llark_jax infer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="training workdir")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    parser.add_argument("--tokenizer", default=None, help="HF tokenizer dir with the LLark tokens")
    parser.add_argument(
        "--template",
        default=None,
        help="conversation template (default: the config's data.template, else fastchat_v0)",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", help="audio file to ask about (with --question)")
    source.add_argument("--records", help="directory of TFRecord shards (with --output)")
    parser.add_argument("--question", help="the question for --audio")
    parser.add_argument("--output", help="predictions JSONL for --records (resumable)")
    parser.add_argument(
        "--encoder", default=None, help="audio encoder for --audio (default: config data.encoder)"
    )
    parser.add_argument(
        "--window-frames",
        type=int,
        default=0,
        help="frames per audio window (default: config data.audio_frames)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (paper)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.audio and not args.question:
        print("error: --audio needs --question", file=sys.stderr)
        return 2
    if args.records and not args.output:
        print("error: --records needs --output", file=sys.stderr)
        return 2
    from llark_jax.data.conversation import get_template
    from llark_jax.infer.answer import Answerer, answer_records, request_from_windows

    model, config, step = load_checkpoint(args.checkpoint, args.step)
    tokenizer = load_tokenizer(args.tokenizer, config, model)
    sampling = SamplingConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    template = get_template(args.template or config.data.get("template", "fastchat_v0"), tokenizer)
    if config.data.get("system_prompt"):  # the system prompt the model was trained with
        template = dataclasses.replace(template, system_prompt=config.data.system_prompt)
    answerer = Answerer(model, tokenizer, template, sampling, batch_size=args.batch_size)
    if args.audio:
        window = args.window_frames or int(config.data.get("audio_frames", 250))
        encoder, encoder_args = config_encoder(config, args.encoder)
        windows = encode_audio_file(args.audio, encoder, window, encoder_args)
        result = answerer.answer([request_from_windows(args.question, windows)])[0]
        print(result["answer"])
        print(json.dumps({"step": step, "windows": len(windows), **result}), file=sys.stderr)
        return 0
    summary = answer_records(answerer, args.records, args.output)
    print(json.dumps({"step": step, **summary}, indent=2))
    return 0
