"""Analytic training FLOPs of the LLark step (XLA's cost analysis counts a scanned layer once)."""

from __future__ import annotations

from llark_jax.model.llama import LlamaConfig


def train_flops_per_step(cfg: LlamaConfig, *, audio_dim: int, batch: int, seq_len: int,
                         audio_frames: int, audio_layers: int = 0,
                         head_positions: int = 0) -> float:
    """Analytic training FLOPs of one optimizer step (forward + backward = 3 × forward).

    Per token: 6·N_matmul (N_matmul = decoder-layer matmul params + lm_head; the embedding lookup
    does no FLOPs) plus causal-free attention 12·layers·heads·head_dim·seq_len (PaLM convention);
    the projector adds 6·D·hidden per audio frame (D = D_audio, or D_audio / L after a layer mix
    over `audio_layers` L > 0; the mix itself, 6·D_audio per frame, is counted too). With
    `head_positions` K > 0 (`train.head_positions`) the lm_head term counts K positions per row
    instead of `seq_len`: the FLOPs the step executes. Remat recomputation is not counted (MFU
    convention). XLA's cost analysis counts a scanned layer body once, so it is not used.
    """
    d, h = cfg.hidden_size, cfg.head_dim
    attn = d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = 3 * d * cfg.intermediate_size
    tokens = batch * seq_len
    head_tokens = batch * min(head_positions, seq_len) if head_positions else tokens
    layers = 6 * cfg.num_layers * (attn + mlp) * tokens
    head = 6 * d * cfg.padded_vocab_size * head_tokens
    attention = 12 * cfg.num_layers * cfg.num_heads * h * seq_len
    dense_in = audio_dim // audio_layers if audio_layers else audio_dim
    mix = 6 * audio_dim if audio_layers else 0
    projector = (6 * dense_in * d + mix) * batch * audio_frames
    return float(layers + head + attention * tokens + projector)
