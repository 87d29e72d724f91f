"""A PyTorch reference of the official LLark forward (spec §1.4), loaded with our Flax weights.

`TorchLLark` = Hugging Face `LlamaForCausalLM` + `nn.Linear(D_audio, E)` projector, with the
official `WrappedLlamav2Model.forward` splice: per row and per `<audio_start>` p, the row is rebuilt
from the ORIGINAL embeddings as `embeds[:p] (detached) ++ embeds[p] ++ audio ++ embeds[p+T+1]
++ embeds[p+T+2:] (detached)` (the "HACK" of the LLark run; only the last segment survives when
there are several), then the causal-LM loss: shift by one, `CrossEntropyLoss()` (mean over labels
!= -100). The weights are copied from an `llark_jax.model.llark.LLark` (float32).
"""

from __future__ import annotations

import jax
import numpy as np
import torch
from flax import nnx
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from llark_jax.model.llark import LLark


def _t(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, dtype=np.float32))


class TorchLLark(torch.nn.Module):
    def __init__(self, model: LLark):
        super().__init__()
        cfg = model.llama.config
        hf_cfg = HFLlamaConfig(**cfg.to_hf_dict())
        hf_cfg.vocab_size = cfg.padded_vocab_size
        self.lm = LlamaForCausalLM._from_config(hf_cfg, attn_implementation="eager",
                                                dtype=torch.float32)
        audio_dim = model.projector.kernel.shape[0]
        self.mm_projector = torch.nn.Linear(audio_dim, cfg.hidden_size, bias=True)
        self.patch_id, self.start_id, self.end_id = (
            model.audio_patch_id, model.audio_start_id, model.audio_end_id,
        )
        self._load(model)

    @torch.no_grad()
    def _load(self, model: LLark) -> None:
        p = nnx.state(model, nnx.Param)["llama"]
        cfg = model.llama.config
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        hf = self.lm.model
        hf.embed_tokens.weight.copy_(_t(p["embed"][...]))
        hf.norm.weight.copy_(_t(p["final_norm"]["scale"][...]))
        for i, layer in enumerate(hf.layers):
            src = jax.tree.map(lambda stacked, i=i: stacked[i], p["layers"])  # row i of [L, ...]
            attn, mlp = src["attn"], src["mlp"]
            layer.self_attn.q_proj.weight.copy_(_t(attn["q"][...]).reshape(d, n * h).T)
            layer.self_attn.k_proj.weight.copy_(_t(attn["k"][...]).reshape(d, k * h).T)
            layer.self_attn.v_proj.weight.copy_(_t(attn["v"][...]).reshape(d, k * h).T)
            layer.self_attn.o_proj.weight.copy_(_t(attn["o"][...]).reshape(n * h, d).T)
            layer.mlp.gate_proj.weight.copy_(_t(mlp["gate"][...]).T)
            layer.mlp.up_proj.weight.copy_(_t(mlp["up"][...]).T)
            layer.mlp.down_proj.weight.copy_(_t(mlp["down"][...]).T)
            layer.input_layernorm.weight.copy_(_t(src["input_norm"]["scale"][...]))
            layer.post_attention_layernorm.weight.copy_(_t(src["post_attn_norm"]["scale"][...]))
        if cfg.tie_word_embeddings:
            self.lm.lm_head.weight = hf.embed_tokens.weight
        else:
            self.lm.lm_head.weight.copy_(_t(p["lm_head"][...]).T)
        proj = nnx.state(model, nnx.Param)["projector"]
        self.mm_projector.weight.copy_(_t(proj["kernel"][...]).T)
        self.mm_projector.bias.copy_(_t(proj["bias"][...]))

    def splice(self, input_ids: torch.Tensor, audio_btd: torch.Tensor) -> torch.Tensor:
        """The official per-row splice with the detach hack; audio [B, T, D_audio]."""
        embeds = self.lm.model.embed_tokens(input_ids)
        features = self.mm_projector(audio_btd)
        rows = []
        for b in range(input_ids.shape[0]):
            row = embeds[b]
            starts = torch.nonzero(input_ids[b] == self.start_id).flatten().tolist()
            t = features.shape[1]
            for p in starts:
                if int(input_ids[b, p + t + 1]) != self.end_id:
                    raise ValueError("audio_end not where the audio length says")
                orig = embeds[b]
                row = torch.cat([
                    orig[:p].detach(), orig[p : p + 1], features[b],
                    orig[p + t + 1 : p + t + 2], orig[p + t + 2 :].detach(),
                ])
            rows.append(row)
        return torch.stack(rows)

    def forward(self, input_ids, audio_btd, attention_mask, labels):
        """Returns (loss, logits [B,T,V]) exactly as `WrappedLlamav2ForCausalLM.forward`."""
        hidden = self.lm.model(
            inputs_embeds=self.splice(input_ids, audio_btd), attention_mask=attention_mask
        ).last_hidden_state
        logits = self.lm.lm_head(hidden)
        shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
        shift_labels = labels[:, 1:].reshape(-1)
        loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        return loss, logits
