"""Dataset adapters over tiny fixture files written in each dataset's real format, via the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pretty_midi
import pytest

from data_prep.datasets import ADAPTERS
from data_prep.stages import jsonify
from llark_jax.io import read_jsonl


def _run(tmp_path: Path, dataset: str, root: Path, *extra: str) -> tuple[list[dict], dict]:
    output = tmp_path / "out" / f"{dataset}.jsonl"
    code = jsonify.main(["--dataset", dataset, "--root", str(root), "--output", str(output),
                         *extra])
    report = json.loads(output.with_name(output.name + ".report.json").read_text())
    assert code == 0, report
    return read_jsonl(output), report


def _write_csv(path: Path, rows: list[list], delimiter: str = ",", quote_all: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter,
                   quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL).writerows(rows)


def test_fma_three_header_rows_kept_fields_genres_html_language(tmp_path):
    meta = tmp_path / "fma" / "fma_metadata"
    columns = [("album", "information"), ("album", "tags"), ("album", "title"),
               ("artist", "name"), ("artist", "tags"), ("set", "split"), ("set", "subset"),
               ("track", "genre_top"), ("track", "genres"), ("track", "genres_all"),
               ("track", "information"), ("track", "language_code"), ("track", "title")]
    header = [["", *[g for g, _ in columns]], ["", *[f for _, f in columns]],
              ["track_id", *[""] * len(columns)]]
    rows = [
        ["2", "<p>Live &amp; loud,<br/>recorded in NYC</p>", "['lo-fi']", "AWOL", "AWOL",
         "['awol', 'rap']", "training", "small", "Hip-Hop", "[21]", "[21, 1]", "", "en", "Food"],
        ["5", "", "[]", "Rare", "Kurt", "[]", "test", "large", "Rock", "[12]", "[12]",
         "<b>Great</b> track", "", "Bird"],
        ["9", "", "[]", "X", "Y", "[]", "validation", "medium", "Pop", "[999]", "[999]", "",
         "fr", "T"],
    ]
    _write_csv(meta / "tracks.csv", header + rows)
    _write_csv(meta / "genres.csv", [["genre_id", "#tracks", "parent", "title", "top_level"],
                                     ["1", "8693", "38", "Avant-Garde", "38"],
                                     ["12", "32923", "0", "Rock", "12"],
                                     ["21", "8389", "0", "Hip-Hop", "21"]])
    records, report = _run(tmp_path, "fma", tmp_path / "fma", "--audio-root", "/audio")
    by_id = {r["id"]: r for r in records}
    assert set(by_id) == {"2", "5"}
    first = by_id["2"]
    assert first["split"] == "train" and first["dataset"] == "fma"
    assert first["audio_path"] == "/audio/000/000002.mp3"
    assert set(first["metadata"]) == {"track.id", "album.information", "album.tags",
                                      "artist.tags", "track.genre_top", "track.genres_all",
                                      "track.information", "track.language_code"}
    assert first["metadata"]["album.information"] == "Live & loud,\nrecorded in NYC"
    assert first["metadata"]["track.genres_all"] == ["Hip-Hop", "Avant-Garde"]
    assert first["metadata"]["artist.tags"] == ["awol", "rap"]
    assert first["metadata"]["track.language_code"] == "English"
    second = by_id["5"]["metadata"]
    assert by_id["5"]["split"] == "test" and second["track.information"] == "Great track"
    assert second["track.language_code"] == "Unknown"
    assert [(s["item"], "999" in s["reason"]) for s in report["skipped"]] == [("9", True)]
    only_test, _ = _run(tmp_path, "fma", tmp_path / "fma", "--split", "test")
    assert [r["id"] for r in only_test] == ["5"]


def test_mtg_jamendo_tags_and_seeded_persistent_test_split(tmp_path):
    root = tmp_path / "jamendo"
    lines = ["TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS"]
    for i in range(30):
        all_tags = ["genre---rock", "instrument---piano", "genre---pop", "mood/theme---happy"]
        tags = all_tags[: i % 4 + 1]
        lines.append("\t".join([f"track_{214 + i:07d}", "artist_000014", "album_000031",
                                f"{(214 + i) % 100:02d}/{214 + i}.mp3", f"{120.5 + i}", *tags]))
    lines.append("track_bad\tartist\talbum\tx.mp3\t1.0\tgenre---rock")
    root.mkdir()
    (root / "autotagging.tsv").write_text("\n".join(lines) + "\n")
    records, report = _run(tmp_path, "mtg-jamendo", root, "--test-size", "10")
    assert len(records) == 30 and [s["item"] for s in report["skipped"]] == ["track_bad"]
    first = records[0]
    assert first["id"] == "214" and first["audio_path"] == str(root / "14/214.mp3")
    assert first["metadata"] == {"genre": ["rock"], "instrument": [], "mood/theme": [],
                                 "id": "214"}
    assert records[3]["metadata"]["genre"] == ["pop", "rock"]
    split_file = tmp_path / "out" / "mtg-jamendo-test-ids.txt"
    test_ids = split_file.read_text().split()
    assert len(test_ids) == 10 and sorted(r["id"] for r in records if r["split"] == "test") == \
        sorted(test_ids)
    split_file.write_text("215\n")  # the stored split wins over regeneration
    again, _ = _run(tmp_path, "jamendo", root)
    assert [r["id"] for r in again if r["split"] == "test"] == ["215"]


def test_magnatagatune_join_and_folder_splits(tmp_path):
    root = tmp_path / "mtt"
    info_header = ["clip_id", "track_number", "title", "artist", "album", "url", "segmentStart",
                   "segmentEnd", "original_url", "mp3_path"]
    mp3s = ["0/a-b-01-x-0-29.mp3", "a/c-d-02-y-30-59.mp3", "c/e-f-03-z-0-29.mp3",
            "f/american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59.mp3"]
    info = [info_header] + [[str(i + 2), "1", f"T{i}", "A", "B", "http://x", "0", "29", "u", m]
                            for i, m in enumerate(mp3s)]
    _write_csv(root / "clip_info_final.csv", info, "\t", quote_all=True)
    tags = [["clip_id", "no voice", "singer", "guitar", "mp3_path"]] + [
        [str(i + 2), str(i % 2), "0", "1", m] for i, m in enumerate(mp3s)]
    tags.append(["999", "0", "0", "0", "0/missing.mp3"])
    _write_csv(root / "annotations_final.csv", tags, "\t")
    records, report = _run(tmp_path, "magnatagatune", root)
    assert [r["split"] for r in records] == ["train", "train", "validation", "test"]
    last = records[-1]
    assert last["id"] == "american_bach_soloists-j_s__bach_solo_cantatas-01-bwv54__i_aria-30-59"
    assert last["metadata"]["chunk"] == "f" and last["metadata"]["title"] == "T3"
    assert last["metadata"]["no voice"] == 1 and last["metadata"]["guitar"] == 1
    assert last["metadata"]["segmentEnd"] == "29"
    assert [s["item"] for s in report["skipped"]] == ["999"]


def test_musicnet_metadata_em_midi_notes_and_official_split(tmp_path):
    root = tmp_path / "musicnet"
    _write_csv(root / "musicnet_metadata.csv", [
        ["id", "composer", "composition", "movement", "ensemble", "source", "transcriber",
         "catalog_name", "seconds"],
        ["1727", "Schubert", "Piano Quintet in A major", "2. Andante", "Piano Quintet",
         "European Archive", "http://tv.com", "D667", "447"],
        ["1759", "Schubert", "Piano Sonata in A major", "2. Andantino", "Solo Piano", "CD",
         "x", "D959", "465"],
        ["2000", "Bach", "Cello Suite", "1. Prelude", "Solo Cello", "CD", "x", "BWV1007", "100"],
    ])
    for split, track in (("train", "1727"), ("test", "1759"), ("train", "2000")):
        (root / f"{split}_data").mkdir(parents=True, exist_ok=True)
        (root / f"{split}_data" / f"{track}.wav").write_bytes(b"")
    midi = pretty_midi.PrettyMIDI()
    for program, pitch in ((40, 60), (40, 67), (45, 62), (0, 48)):  # violin x2, pizz., piano
        instrument = pretty_midi.Instrument(program)
        instrument.notes.append(pretty_midi.Note(80, pitch, 0.123, 1.5))
        midi.instruments.append(instrument)
    (root / "musicnet_em" / "musicnet_em").mkdir(parents=True)
    midi.write(str(root / "musicnet_em" / "musicnet_em" / "1727.mid"))
    (root / "musicnet_em" / "musicnet_em" / "1759.mid").write_bytes(b"MThd garbage")
    records, report = _run(tmp_path, "musicnet", root)
    (record,) = records
    assert record["split"] == "train" and record["audio_path"] == str(root / "train_data/1727.wav")
    notes = record["metadata"]["notes"]
    assert sorted(notes) == ["Acoustic Grand Piano", "Violin", "Violin 2", "Violin 3"]
    assert notes["Violin"] == [{"start": 0.12, "end": 1.5, "pitch": "C5"}]
    assert notes["Violin 3"][0]["pitch"] == "D5"  # Pizzicato Strings -> Violin
    assert notes["Acoustic Grand Piano"][0]["pitch"] == "C4"
    assert {k for k in record["metadata"]} == {"id", "composer", "composition", "movement",
                                               "ensemble", "notes"}
    reasons = {s["item"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"1759", "2000"} and "MIDI" in reasons["1759"]


def test_musiccaps_is_audioset_eval_split_and_yt8m_all(tmp_path):
    root = tmp_path / "caps"
    header = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption",
              "author_id", "is_balanced_subset", "is_audioset_eval"]
    _write_csv(root / "musiccaps-public.csv", [
        header,
        ["-0Gj8-vB1q4", "30", "40", "/m/0140xf,/m/02cjck", "['low quality', 'sustained strings']",
         "The low quality recording features a ballad song, with \"strings\", and more.", "4",
         "False", "True"],
        ["-0SdAVK79lg", "30", "40", "/m/0155w", "['guitar song']", "A guitar, playing.", "0",
         "False", "False"],
    ])
    test, _ = _run(tmp_path, "musiccaps", root, "--split", "test")
    assert [r["id"] for r in test] == ["-0Gj8-vB1q4"]
    assert test[0]["metadata"]["aspect_list"] == ["low quality", "sustained strings"]
    assert test[0]["metadata"]["is_audioset_eval"] is True and test[0]["metadata"]["end_s"] == 40
    train, _ = _run(tmp_path, "musiccaps", root, "--split", "train")
    assert [r["id"] for r in train] == ["-0SdAVK79lg"]
    _write_csv(root / "train.csv", [["video_id", "text"], ["aaa", "calm piano"], ["bbb", " "]])
    _write_csv(root / "test.csv", [["video_id", "text"], ["ccc", "loud drums"]])
    records, report = _run(tmp_path, "yt8m-musictextclips", root)
    assert [(r["id"], r["split"]) for r in records] == [("aaa", "train"), ("ccc", "test")]
    assert records[0]["metadata"] == {"video_id": "aaa", "text": "calm piano"}
    assert report["skipped"][0]["item"] == "bbb"


def test_evaluation_sets_giantsteps_gtzan_medleydb(tmp_path):
    gs = tmp_path / "gs"
    (gs / "annotations" / "key").mkdir(parents=True)
    (gs / "annotations" / "key" / "10089.LOFI.key").write_text("Eb minor")
    (gs / "annotations_v2" / "tempo").mkdir(parents=True)
    (gs / "annotations_v2" / "tempo" / "10089.LOFI.bpm").write_text("128\n")
    (gs / "annotations_v2" / "tempo" / "2000.LOFI.bpm").write_text("0")
    keys, _ = _run(tmp_path, "giantsteps-key", gs)
    assert keys == [{"id": "10089", "dataset": "giantsteps-key", "split": "test",
                     "audio_path": str(gs / "audio" / "10089.LOFI.mp3"),
                     "metadata": {"id": "10089", "giantsteps_key": "Eb minor"}}]
    tempi, report = _run(tmp_path, "giantsteps-tempo", gs)
    assert [r["metadata"]["giantsteps_tempo"] for r in tempi] == [128.0]
    assert report["skipped"][0]["item"] == "2000" and "0 BPM" in report["skipped"][0]["reason"]

    gtzan = tmp_path / "gtzan" / "genres"
    for genre in ("blues", "rock"):
        (gtzan / genre).mkdir(parents=True)
        (gtzan / genre / f"{genre}.00000.wav").write_bytes(b"")
    records, _ = _run(tmp_path, "gtzan", tmp_path / "gtzan")
    assert [(r["id"], r["metadata"]["genre"]) for r in records] == [("blues.00000", "blues"),
                                                                   ("rock.00000", "rock")]

    medley = tmp_path / "medleydb"
    (medley / "Metadata").mkdir(parents=True)
    (medley / "Metadata" / "Artist_Song_METADATA.yaml").write_text(
        "artist: Artist\ngenre: Singer/Songwriter\nstems:\n"
        "  S01:\n    component: ''\n    instrument: drum set\n"
        "  S02:\n    component: melody\n    instrument: female singer\n")
    act = medley / "Annotations" / "Instrument_Activations" / "ACTIVATION_CONF"
    act.mkdir(parents=True)
    (act / "Artist_Song_ACTIVATION_CONF.lab").write_text(
        "time,S01,S02\n0.0,0.9,0.1\n0.5,0.8,0.7\n1.0,0.2,0.9\n1.5,0.9,0.6\n")
    (record,) = _run(tmp_path, "medleydb", medley)[0]
    assert record["metadata"]["genre"] == "Singer/Songwriter"
    assert record["metadata"]["instruments"] == ["drum set", "female singer"]
    assert record["metadata"]["instrument_activations"] == {
        "drum set": [[0.0, 1.0], [1.5, 2.0]], "female singer": [[0.5, 2.0]]}


def test_missing_dataset_file_is_a_clear_error(tmp_path, capsys):
    output = tmp_path / "x.jsonl"
    code = jsonify.main(["--dataset", "musiccaps", "--root", str(tmp_path), "--output",
                         str(output)])
    assert code == 2 and "musiccaps-public.csv" in capsys.readouterr().out
    report = json.loads((tmp_path / "x.jsonl.report.json").read_text())
    assert report["errors"][0]["error"] == "DatasetFormatError"


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_adapter_is_importable(name):
    from data_prep.datasets import load_adapter

    assert callable(load_adapter(name))
