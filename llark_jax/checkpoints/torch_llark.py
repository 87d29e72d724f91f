"""LLark in PyTorch: a Hugging Face `LlamaForCausalLM` + the LLark audio projector and splice.

`python -m llark_jax export` copies this file into its output directory OUT as
`modeling_llark.py` (its source lives in `llark_jax/checkpoints/torch_llark.py`; llark_jax never
imports it, so torch stays out of llark_jax). It needs only torch, transformers and safetensors:

    import sys; sys.path.insert(0, OUT)
    from modeling_llark import LlarkForCausalLM
    model = LlarkForCausalLM.from_pretrained(OUT, torch_dtype=torch.float32)  # None: as exported
    tokenizer = transformers.AutoTokenizer.from_pretrained(OUT)  # holds <audio_patch> etc.
    logits = model(input_ids, audio)  # [B, T] long, [B, T_a, D] or [B, S, T_a, D] -> [B, T, V]

The language model alone is a plain Llama: `AutoModelForCausalLM.from_pretrained(OUT)` (no remote
code). Files read here: `llark_config.json` (audio_dim, audio_layers, temporal_pool, token ids) and
`llark_projector.safetensors` (`projector.weight` [E, D], `projector.bias` [E] and, when
audio_layers L > 0, `layer_mix.logits` [L] float32).

The forward reproduces `llark_jax.model.llark.LLark.__call__`:

    audio [B,S,T_a,L*D] --LayerMix: sum_l softmax(logits)[l] * x[..., l*D:(l+1)*D] (float32)-->
      [B,S,T_a,D] --Linear D->E (model dtype)--> [B,S,T_a,E]
      --mean over groups of temporal_pool frames (valid frames of audio_mask)--> [B,S,T',E]
      --flatten--> frames [B, F=S*T', E]
    x = embed_tokens(input_ids); x[b,t] = frames[b, index[b,t]] where input_ids[b,t] == patch id,
      index = audio_frame_index, or k for the k-th patch token of the row when None (clipped to
      [0, F-1])
    logits = LlamaForCausalLM(inputs_embeds=x, attention_mask=attention_mask).logits (float32)

Use right padding: positions are 0..T-1 in every row, as in the JAX model for right-padded rows.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

LLARK_CONFIG_FILE = "llark_config.json"
PROJECTOR_FILE = "llark_projector.safetensors"


class LayerMix(torch.nn.Module):
    """MusiLingo's learned layer average over L encoder states; `logits` [L] float32."""

    def __init__(self, n_layers: int):
        super().__init__()
        self.n_layers = n_layers
        self.logits = torch.nn.Parameter(torch.zeros(n_layers, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stored layout [..., T, L*D] -> [..., T, D]; the sum in float32, result in x's dtype."""
        x_ld = x.reshape(*x.shape[:-1], self.n_layers, x.shape[-1] // self.n_layers)
        weights_l = torch.softmax(self.logits.float(), dim=0)
        return torch.einsum("...ld,l->...d", x_ld.float(), weights_l).to(x.dtype)


class LlarkForCausalLM(torch.nn.Module):
    """`lm` (transformers `LlamaForCausalLM`) + `layer_mix` (or None) + `projector` (Linear D->E).

    `config` is the dict of `llark_config.json`; `audio_patch_id` etc. are its token ids.
    """

    def __init__(self, lm: torch.nn.Module, config: dict[str, Any]):
        super().__init__()
        self.lm = lm
        self.config = dict(config)
        layers = int(config.get("audio_layers", 0))
        audio_dim = int(config["audio_dim"])
        in_dim = audio_dim // layers if layers else audio_dim
        self.layer_mix = LayerMix(layers) if layers else None
        dtype = lm.get_input_embeddings().weight.dtype
        self.projector = torch.nn.Linear(in_dim, lm.config.hidden_size, bias=True, dtype=dtype)
        self.temporal_pool = int(config.get("temporal_pool", 1))
        self.audio_patch_id = int(config["audio_patch_id"])
        self.audio_start_id = int(config["audio_start_id"])
        self.audio_end_id = int(config["audio_end_id"])

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        torch_dtype: torch.dtype | str | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        **lm_kwargs,
    ) -> LlarkForCausalLM:
        """Loads an exported directory; `torch_dtype` (or `dtype`) None/"auto" keeps the
        exported dtype. The projector follows the LM's dtype and (first) device.

        `lm_kwargs` go to `AutoModelForCausalLM.from_pretrained` (e.g. `attn_implementation`,
        `device_map`).
        """
        path = os.fspath(path)
        with open(os.path.join(path, LLARK_CONFIG_FILE)) as f:
            config = json.load(f)
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch_dtype or "auto",
                                                  **lm_kwargs)
        model = cls(lm, config)
        result = model.load_state_dict(load_file(os.path.join(path, PROJECTOR_FILE)),
                                       strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("lm.")]
        if missing or result.unexpected_keys:
            raise ValueError(f"{PROJECTOR_FILE}: missing {missing}, "
                             f"unexpected {result.unexpected_keys}")
        model.projector.to(lm.device)
        if model.layer_mix is not None:
            model.layer_mix.to(lm.device)
        return model.eval()

    def project_audio(
        self, audio: torch.Tensor, audio_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """audio [B,S,T_a,D] or [B,T_a,D] -> frames [B, S*T_a/temporal_pool, E] (model dtype).

        `audio_mask` [B,S,T_a] (or [B,T_a]) bool marks valid frames for the temporal mean.
        """
        if audio.ndim == 3:
            audio = audio[:, None]
            audio_mask = None if audio_mask is None else audio_mask[:, None]
        weight = self.projector.weight
        audio = audio.to(weight.device)
        audio_mask = None if audio_mask is None else audio_mask.to(weight.device)
        b, s, t, _ = audio.shape
        if self.layer_mix is not None:
            audio = self.layer_mix(audio)
        frames = self.projector(audio.to(weight.dtype))
        p = self.temporal_pool
        if p > 1:
            if t % p:
                raise ValueError(f"T_a={t} is not a multiple of temporal_pool={p}")
            grouped = frames.reshape(b, s, t // p, p, -1)
            w = torch.ones((b, s, t), dtype=grouped.dtype, device=grouped.device)
            if audio_mask is not None:
                w = audio_mask.to(grouped.dtype)
            w = w.reshape(b, s, t // p, p, 1)
            frames = (grouped * w).sum(3) / w.sum(3).clamp(min=1)
        return frames.reshape(b, -1, frames.shape[-1])

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        audio: torch.Tensor | None,
        audio_frame_index: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings [B,T,E] with projected frames at the `<audio_patch>` positions."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        if audio is None:
            return embeds
        frames = self.project_audio(audio, audio_mask).to(embeds.device)
        is_patch = input_ids == self.audio_patch_id
        if audio_frame_index is None:
            audio_frame_index = torch.cumsum(is_patch.long(), dim=1) - 1
        index = audio_frame_index.to(embeds.device).long().clamp(0, frames.shape[1] - 1)
        spliced = torch.gather(frames, 1, index[..., None].expand(-1, -1, frames.shape[-1]))
        return torch.where(is_patch[..., None], spliced.to(embeds.dtype), embeds)

    def forward(
        self,
        input_ids: torch.Tensor,
        audio: torch.Tensor | None = None,
        audio_frame_index: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B,T] long, audio [B,T_a,D] | [B,S,T_a,D] | None -> logits [B,T,V] float32.

        `audio_frame_index` [B,T] long: flat frame s*T' + t at patch positions (T' =
        T_a/temporal_pool), ignored elsewhere. `attention_mask` [B,T] (1 = token, right padding).
        """
        embeds = self.embed_inputs(input_ids, audio, audio_frame_index, audio_mask)
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        return out.logits.float()
