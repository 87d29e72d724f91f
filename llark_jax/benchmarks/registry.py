"""The benchmarks `python -m llark_jax benchmark NAME` knows: layout reader, label, crop, prompt.

| NAME | data folder (published layout) | task | paper prompt | crop |
|---|---|---|---|---|
| giantsteps-key | annotations/key/*.key, audio/*.mp3 | key | KEY_PROMPT | [30, 55) s |
| giantsteps-tempo | annotations_v2/tempo/*.bpm, audio/*.mp3 | tempo | TEMPO_PROMPT | rule |
| gtzan | genres/<genre>/*.wav | genre | GENRE_PROMPT | rule |
| medleydb | Metadata/*.yaml, activations, Audio/ | instruments | INSTRUMENTS_PROMPT | [30, 55) s |
| medleydb-genre | as medleydb | genre | GENRE_PROMPT | [30, 55) s |
| musicnet | test_labels/*.csv, test_data/*.wav | instruments | INSTRUMENTS_PROMPT | every 25 s |
| musiccaps | musiccaps-public.csv, {ytid}.wav | captions | CAPTION_PROMPT | rule |
| muchomusic | *.json + audio/ | mcq | question + lettered options | rule |
| mmau | *.json (music items) + audio | mcq | question + lettered options | rule |

"rule" is the paper's crop rule (`llark_jax.audio.crop`: a track <= 60 s from 0, a longer one
[30, 55) with probability 0.8); GiantSteps key and MedleyDB always take [30, 55) as the
reference's ``--p 0.0`` did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llark_jax.benchmarks import giantsteps, gtzan, medleydb, musiccaps, musicnet
from llark_jax.benchmarks.clips import Clip, CropSpec, prepare_clips
from llark_jax.eval.prompts import INSTRUMENTS_PROMPT, KEY_PROMPT, TEMPO_PROMPT

GENRE_PROMPT = "What genre is this song?"  # paper §D.1.3
CAPTION_PROMPT = "Describe the contents of the provided audio in detail."  # paper §F.2.1
MEDLEYDB_GENRES = ("Singer/Songwriter", "Pop", "World/Folk", "Classical", "Rock",
                   "Electronic/Fusion", "Jazz", "Musical Theatre")
ALWAYS_MIDDLE = CropSpec(p_middle=1.0)

# (data dir, limit, seed) -> (clips, skipped [{item, reason}], notes for the report)
ClipReader = Callable[[Path, int | None, int], tuple[list[Clip], list[dict], list[str]]]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how its clips are read and labelled, what is asked, what is reported.

    Attributes:
      task: key | tempo | genre | instruments | captions | mcq (the scoring of `scoring.py`).
      baselines: systems computed beside the model (`baselines.py`).
      metrics: the metrics of the report's table (all are in report.json).
      majority_k: instruments in the majority answer (paper §D.1.4: 5 MedleyDB, 1 MusicNet).
      vocabulary: extra candidate instruments (distractors) of instrument F1.
      classes: the genre label set (default: the labels seen).
    """

    name: str
    task: str
    prompt: str
    read: ClipReader | None
    baselines: tuple[str, ...]
    metrics: tuple[str, ...]
    description: str
    majority_k: int = 1
    vocabulary: tuple[str, ...] = ()
    classes: tuple[str, ...] | None = None
    json_name: str = ""


def _giantsteps_key(root: Path, limit: int | None, seed: int):
    clips, skipped = prepare_clips(
        giantsteps.read_key(root), lambda r, w: r.metadata["giantsteps_key"], ALWAYS_MIDDLE,
        annotation_of=lambda r: f"annotations/key/{Path(r.audio_path).stem}.key",
        limit=limit, seed=seed)
    return clips, skipped, []


def _giantsteps_tempo(root: Path, limit: int | None, seed: int):
    clips, skipped = prepare_clips(
        giantsteps.read_tempo(root), lambda r, w: r.metadata["giantsteps_tempo"], CropSpec(),
        annotation_of=lambda r: f"annotations_v2/tempo/{Path(r.audio_path).stem}.bpm",
        limit=limit, seed=seed)
    return clips, skipped, []


def _gtzan(root: Path, limit: int | None, seed: int):
    clips, skipped = prepare_clips(gtzan.read_gtzan(root), lambda r, w: r.metadata["genre"],
                                   CropSpec(), limit=limit, seed=seed)
    return clips, skipped, []


def _medleydb_instruments(root: Path, limit: int | None, seed: int):
    unknown: dict[str, set[str]] = {}

    def label(record, window):
        raw = medleydb.active_instruments(record.metadata, window.start_s, window.end_s)
        known, missing = medleydb.canonical_instruments(raw)
        if missing:
            unknown.setdefault(str(medleydb.metadata_file(root, record.id)), set()).update(missing)
        return known

    clips, skipped = prepare_clips(
        medleydb.read_medleydb(root), label, ALWAYS_MIDDLE,
        annotation_of=lambda r: str(medleydb.metadata_file(root, r.id)), limit=limit, seed=seed)
    notes = [f"unknown MedleyDB instrument(s) {sorted(names)} in {path}: not in the mapping "
             "(llark_jax/benchmarks/medleydb.py INSTRUMENT_MAP, docs/eval.md), ignored"
             for path, names in sorted(unknown.items())]
    return clips, skipped, notes


def _medleydb_genre(root: Path, limit: int | None, seed: int):
    clips, skipped = prepare_clips(
        medleydb.read_medleydb(root), lambda r, w: r.metadata.get("genre"), ALWAYS_MIDDLE,
        annotation_of=lambda r: str(medleydb.metadata_file(root, r.id)), limit=limit, seed=seed)
    return clips, skipped, []


def _musicnet(root: Path, limit: int | None, seed: int):
    clips, skipped = prepare_clips(
        musicnet.read_musicnet(root),
        lambda r, w: musicnet.instruments_in(r.metadata["notes"], w.start_s, w.end_s),
        CropSpec(multicrop=True), annotation_of=lambda r: r.metadata["label_file"],
        limit=limit, seed=seed)
    return clips, skipped, []


def _musiccaps(root: Path, limit: int | None, seed: int):
    clips, skipped = prepare_clips(musiccaps.read_musiccaps(root),
                                   lambda r, w: r.metadata["caption"], CropSpec(),
                                   annotation_of=lambda r: musiccaps.CSV_NAME,
                                   limit=limit, seed=seed)
    return clips, skipped, []


KEY_TEMPO = ("majority", "madmom", "random", "model-shuffled")
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("giantsteps-key", "key", KEY_PROMPT, _giantsteps_key, KEY_TEMPO,
              ("key_mirex",), "GiantSteps Key: MIREX weighted key score"),
    Benchmark("giantsteps-tempo", "tempo", TEMPO_PROMPT, _giantsteps_tempo,
              ("madmom", "random", "model-shuffled"), ("tempo_acc1", "tempo_acc2"),
              "GiantSteps Tempo (v2 labels): Acc1 / Acc2"),
    Benchmark("gtzan", "genre", GENRE_PROMPT, _gtzan, ("majority", "random", "model-shuffled"),
              ("genre_acc1",), "GTZAN genre: Acc@1 by nearest genre label",
              classes=gtzan.GENRES),
    Benchmark("medleydb", "instruments", INSTRUMENTS_PROMPT, _medleydb_instruments,
              ("majority", "random", "model-shuffled"),
              ("instruments_clip_f1", "instruments_micro_f1"),
              "MedleyDB instrument identification: per-clip F1 (active stems of the crop)",
              majority_k=5, vocabulary=medleydb.CANONICAL),
    Benchmark("medleydb-genre", "genre", GENRE_PROMPT, _medleydb_genre,
              ("majority", "random", "model-shuffled"), ("genre_acc1",),
              "MedleyDB genre: Acc@1 by nearest genre label", classes=MEDLEYDB_GENRES),
    Benchmark("musicnet", "instruments", INSTRUMENTS_PROMPT, _musicnet,
              ("majority", "random", "model-shuffled"),
              ("instruments_micro_f1", "instruments_clip_f1"),
              "MusicNet (test split) instrument identification: micro F1 over 25 s windows",
              majority_k=1, vocabulary=(*musicnet.PROGRAMS.values(), *musicnet.DISTRACTORS)),
    Benchmark("musiccaps", "captions", CAPTION_PROMPT, _musiccaps, ("random", "model-shuffled"),
              ("bleu1", "bleu4", "meteor", "rouge_l", "cider", "bertscore_f1"),
              "MusicCaps (AudioSet-eval half) captioning"),
    Benchmark("muchomusic", "mcq", "", None, ("random", "model-no-audio", "model-shuffled"),
              ("accuracy",), "MuChoMusic multiple-choice music QA", json_name="muchomusic.json"),
    Benchmark("mmau", "mcq", "", None, ("random", "model-no-audio", "model-shuffled"),
              ("accuracy",), "MMAU (music items) multiple-choice QA",
              json_name="mmau-test-mini.json"),
)}
