"""Fixtures of the benchmark tests: tiny model directories (a random one, and one forced to
answer one token), synthesized music with a known key and tempo, and dataset folders in the
published layouts (GiantSteps, GTZAN, MedleyDB, MusicNet, MuChoMusic, MMAU)."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import soundfile as sf
from flax import nnx
from tokenizer_fixtures import make_llark_tokenizer

from llark_jax.checkpoints.model_dir import new_model_dir
from llark_jax.data import conversation as conv
from llark_jax.data.features import FeatureSpec
from llark_jax.model.llama import Llama, LlamaConfig
from llark_jax.model.llark import LLark

SR = 44100
MEL_DIM = 160  # the mel encoder's width
WINDOW_TOKENS = 20  # 2 s of mel frames per audio window


def tiny_llark(tokenizer, seed: int = 0) -> LLark:
    ids = conv.AudioTokenIds.from_tokenizer(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, vocab_multiple=8)
    return LLark(Llama(cfg, rngs=nnx.Rngs(seed)), MEL_DIM, audio_patch_id=ids.patch,
                 audio_start_id=ids.start, audio_end_id=ids.end, rngs=nnx.Rngs(seed + 1))


def force_token(model: LLark, token_id: int, margin: float = 12.0) -> LLark:
    """Rigs the logits: every decoder layer outputs zero and every token embedding is the ones
    vector, so each text position's final state is the same; the head gives `token_id` a logit of
    `margin` and every other token 0. Greedy decoding repeats the token; its log-probability is
    about -1e-3 and any other token's about -(margin + log V)."""
    llama = model.llama
    for _, variable in nnx.to_flat_state(nnx.state(llama.layers, nnx.Param)):
        variable[...] = jnp.zeros_like(variable[...])
    llama.embed[...] = jnp.ones_like(llama.embed[...])
    llama.final_norm.scale[...] = jnp.ones_like(llama.final_norm.scale[...])
    head = jnp.zeros_like(llama.lm_head[...])
    llama.lm_head[...] = head.at[:, token_id].set(margin / head.shape[0])
    return model


def tiny_model_dir(path: Path, model: LLark | None = None, forced_word: str | None = None
                   ) -> Path:
    """A model directory of the tiny LLark (`model`, or a new one) on the mel encoder (2 s
    windows); with `forced_word` (one token of the test tokenizer) a copy of it that only ever
    says that word."""
    tokenizer = make_llark_tokenizer()
    model = model if model is not None else tiny_llark(tokenizer)
    if forced_word is not None:
        [token_id] = tokenizer.encode(forced_word, add_special_tokens=False)
        model = force_token(nnx.clone(model), token_id)
    return new_model_dir(path, model, tokenizer, FeatureSpec(encoder="mel"),
                         audio_frames=WINDOW_TOKENS)


def chord_with_beat(midis: list[int], seconds: float, bpm: float) -> np.ndarray:
    """A held chord (4 partials per note) pulsing and clicking on every beat at `bpm`: madmom
    reads its key and tempo."""
    t = np.arange(int(seconds * SR)) / SR
    x = np.zeros_like(t)
    for midi in midis:
        hz = 440.0 * 2 ** ((midi - 69) / 12)
        x += sum(np.sin(2 * np.pi * hz * k * t) / k**1.5 for k in range(1, 5))
    since_beat = t % (60.0 / bpm)
    click = np.random.default_rng(0).standard_normal(len(t)) * np.exp(-since_beat * 60)
    x = x * (0.3 + 0.7 * np.exp(-since_beat * 12)) + 0.5 * click
    return (0.2 * x / np.abs(x).max()).astype(np.float32)


def tone(seconds: float, midi: int = 60, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    x = np.sin(2 * np.pi * 440.0 * 2 ** ((midi - 69) / 12) * t) * np.exp(-t)
    x = x + 0.02 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * x).astype(np.float32)


def write_audio(path: Path, audio: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".mp3":
        sf.write(str(path), audio, SR, format="MP3", subtype="MPEG_LAYER_III")
    else:
        sf.write(str(path), audio, SR, subtype="PCM_16")
    return path


# name, label key, MIDI chord, BPM; madmom reads the first three right, F# minor as D major
GIANTSTEPS = [("1001.LOFI", "C major", [48, 60, 64, 67], 120.0),
              ("1002.LOFI", "A minor", [45, 57, 60, 64], 100.0),
              ("1003.LOFI", "G major", [43, 55, 59, 62], 140.0),
              ("1004.LOFI", "F# minor", [42, 54, 57, 61], 90.0)]


def giantsteps_dir(root: Path, seconds: float = 6.0) -> Path:
    """GiantSteps key and tempo layouts sharing one audio/ folder (6 s MP3 previews)."""
    for name, key, midis, bpm in GIANTSTEPS:
        write_audio(root / "audio" / f"{name}.mp3", chord_with_beat(midis, seconds, bpm))
        (root / "annotations" / "key").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / "key" / f"{name}.key").write_text(key)
        (root / "annotations_v2" / "tempo").mkdir(parents=True, exist_ok=True)
        (root / "annotations_v2" / "tempo" / f"{name}.bpm").write_text(f"{bpm:g}\n")
    return root


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# (question, correct answer, distractors, categories): the forced "piano" model picks "piano"
MUCHOMUSIC = [("Which instrument carries the melody?", "piano", ["guitar", "drums", "violin"],
               {"music_knowledge": "['Melody']"}),
              ("What keeps the beat?", "drums", ["piano", "guitar", "violin"],
               {"music_reasoning": "['Rhythm']"}),
              ("Which instrument plays the chords?", "piano", ["guitar", "violin", "drums"],
               {"music_knowledge": "['Melody', 'Harmony']"})]


def muchomusic_dir(root: Path) -> Path:
    """MuChoMusic's JSON (the published CSV's columns as JSON rows) + audio/{id}.wav."""
    items = []
    for i, (question, correct, distractors, categories) in enumerate(MUCHOMUSIC):
        write_audio(root / "audio" / f"track{i}.wav", tone(2.5, 57 + 3 * i, seed=i))
        items.append({"id": f"q{i}", "dataset_identifier": f"track{i}", "question": question,
                      "correct_answer": correct,
                      **{f"distractor_{k + 1}_answer": d for k, d in enumerate(distractors)},
                      **categories})
    (root / "muchomusic.json").write_text(json.dumps(items))
    return root
