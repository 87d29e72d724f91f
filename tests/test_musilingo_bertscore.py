"""BERTScore: hand-computed greedy matching, a tiny random BERT folder against its own HF forward,
the offline all-MiniLM-L6-v2 backbone, and MusiLingo's B-U/R-L/BERT-S row."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from llark_jax.eval.bertscore import BertScorer, bertscore, greedy_match, musilingo_metrics

WORDS = ["a", "calm", "piano", "song", "with", "soft", "drums", "loud", "guitar", "rock", "the",
         "is", "fast", "slow", "music"]


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=3,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(folder)
    return folder


def test_greedy_match_hand_computed():
    cand = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert greedy_match(cand, np.array([[1.0, 0.0]])) == pytest.approx((0.5, 1.0, 2 / 3))
    ref = np.array([[1.0, 0.0], [2**-0.5, 2**-0.5]])
    p, r, f = greedy_match(cand, ref)
    assert (p, r) == pytest.approx(((1 + 2**-0.5) / 2, (1 + 2**-0.5) / 2))
    assert f == pytest.approx(p)
    assert greedy_match(np.zeros((0, 2)), ref) == (0.0, 0.0, 0.0)


def test_tiny_bert_embeddings_equal_hf_forward(tiny_bert_dir):
    import torch
    from transformers import AutoModel, AutoTokenizer

    scorer = BertScorer(tiny_bert_dir, layer=2, batch_size=2)
    assert scorer.layer == 2 and "layer2" in scorer.backbone
    texts = ["a calm piano song", "loud rock guitar with fast drums", "music"]
    batched = scorer.embed(texts)  # padded batches of 2
    model, tok = AutoModel.from_pretrained(tiny_bert_dir), AutoTokenizer.from_pretrained(
        tiny_bert_dir)
    for text, emb in zip(texts, batched, strict=True):
        with torch.no_grad():
            h = model(**tok(text, return_tensors="pt"), output_hidden_states=True)
        h_th = h.hidden_states[2][0, 1:-1].numpy()  # drop [CLS]/[SEP]
        np.testing.assert_allclose(emb, h_th / np.linalg.norm(h_th, axis=1, keepdims=True),
                                   atol=1e-5)
    assert BertScorer(tiny_bert_dir).layer == 3  # unknown size: last layer


def test_scores_identity_multi_reference_and_layers(tiny_bert_dir):
    scorer = BertScorer(tiny_bert_dir)
    prf = scorer.score(["a calm piano song", "rock"],
                       ["a calm piano song", ["slow soft music", "loud rock"]])
    np.testing.assert_allclose(prf[0], 1.0, atol=1e-6)
    best = max(scorer.score(["rock"], [r])[0, 2] for r in ("slow soft music", "loud rock"))
    assert prf[1, 2] == pytest.approx(best)
    other = BertScorer(tiny_bert_dir, layer=1).score(["rock"], ["loud rock"])
    assert other[0, 2] != pytest.approx(scorer.score(["rock"], ["loud rock"])[0, 2])
    with pytest.raises(ValueError, match="layer 9"):
        BertScorer(tiny_bert_dir, layer=9)


@pytest.mark.slow
def test_offline_minilm_backbone_orders_paraphrases_above_unrelated():
    scorer = BertScorer()
    assert scorer.layer == 6 and "all-MiniLM-L6-v2" in scorer.backbone
    results = bertscore(["an upbeat rock track with distorted electric guitars",
                         "an upbeat rock track with distorted electric guitars"],
                        ["a fast rock song featuring electric guitar",
                         "a slow, quiet piano lullaby for children"], scorer)
    f1 = results["bertscore_f1"]
    assert f1.details["backbone"] == scorer.backbone and f1.n == 2
    same = scorer.score(["a fast rock song"], ["a fast rock song"])[0, 2]
    para, unrelated = scorer.score(["an upbeat rock track with distorted electric guitars"] * 2,
                                   ["a fast rock song featuring electric guitar",
                                    "a slow, quiet piano lullaby for children"])[:, 2]
    assert same == pytest.approx(1.0, abs=1e-6) and para > unrelated + 0.05


def test_paper_code_row_hand_computed(tiny_bert_dir):
    """MusiLingo's qa.py protocol: char BLEU-4 per item, ROUGE-L recall (stemmed), BERTScore R."""
    scorer = BertScorer(tiny_bert_dir)
    preds = ["a calm piano song###", "calm pianos"]
    refs = ["a calm piano song", "a calm piano song"]
    row = musilingo_metrics(preds, refs, scorer)
    bleu = row["details"]["per_item"]["bleu_char"]
    assert bleu[0] == pytest.approx(1.0)  # "###" stripped: identical strings
    assert 0 < bleu[1] < 1 and row["B-U"] == pytest.approx(50 * (1 + bleu[1]))
    # stemmed tokens: ref [a, calm, piano, song], cand [calm, piano] -> LCS 2, recall 2/4
    assert row["details"]["per_item"]["rouge_l_recall"] == pytest.approx([1.0, 0.5])
    assert row["R-L"] == pytest.approx(75.0)
    assert row["BERT-S"] == pytest.approx(100 * scorer.score(preds, refs)[:, 1].mean())
    if row["M-R"] is None:  # no nltk WordNet corpus here: reported, not substituted
        assert "WordNet" in row["details"]["per_item"]["meteor"]["unavailable"]
    with pytest.raises(ValueError, match="protocol"):
        musilingo_metrics(preds, refs, scorer, protocol="bleu")


def test_standard_row_uses_mean_bleu_1_to_4(tiny_bert_dir):
    from llark_jax.eval.captions import caption_metrics

    preds = ["a calm piano song with soft drums", "loud rock guitar", "slow music"]
    refs = ["a calm piano song", ["loud rock guitar with drums", "rock music"], "slow soft music"]
    row = musilingo_metrics(preds, refs, BertScorer(tiny_bert_dir), protocol="standard",
                            meteor=False)
    captions = caption_metrics(preds, refs, meteor=False)
    expected = 100 * np.mean([captions[f"bleu{n}"].value for n in range(1, 5)])
    assert row["B-U"] == pytest.approx(expected)
    assert row["R-L"] == pytest.approx(100 * captions["rouge_l"].value)
    assert row["M-R"] is None and 0 < row["BERT-S"] <= 100
    assert row["bertscore_backbone"].endswith("@layer3")


def test_module_imports_without_torch():
    code = ("import sys, llark_jax.eval.bertscore, llark_jax.model.layer_mix; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
