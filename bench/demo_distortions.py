"""Does the demo model give the same answers when a clip reaches it as an ordinary user's file?
(issue #23, item 1: "the model's answers stay the same on a fixed set").

Takes the clips of one evaluation set of a finished demo workdir (`eval`: the held-out clips;
`ood`: the out-of-distribution set), writes each as it is and through every distortion of
`data_prep.demo_augment.USER_FILE_DISTORTIONS` (band-limiting, gain, noise, source rates, MP3 and
Vorbis files), and asks the product's `python -m llark_jax infer --audio-dir` the key and the tempo
question about all of them, as a user would. Prints, per distortion, key MIREX and tempo Acc2
against the truth and the share of answers equal to the undistorted file's answer (parsed key
equal; parsed tempo equal).

    python bench/demo_distortions.py [--workdir runs/demo] [--set eval] [--n-clips N] \\
        [--max-new-tokens N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, emit

from data_prep import demo_augment
from llark_jax.audio.io import SAMPLE_RATE, load_audio
from llark_jax.eval.metrics import key_mirex, tempo_accuracy
from llark_jax.eval.parse import parse_key, parse_tempo, strip_completion

QUESTIONS = {"key": "What is the key of this song?", "tempo": "What is the tempo of this song?"}
SETS = {"eval": "data", "ood": "ood/data"}  # set -> its folder (clips.jsonl, audio/) in the workdir
CLEAN = "as_is"


def set_clips(workdir: Path, name: str, n_clips: int | None) -> list[tuple[dict, Path]]:
    """[(truth row, audio file)] of the first `n_clips` (None: all) clips of evaluation set
    `name`."""
    folder = workdir / SETS[name]
    rows = [json.loads(line) for line in (folder / "clips.jsonl").read_text().splitlines()]
    rows = [r for r in rows if name == "ood" or r["split"] == "eval"][:n_clips]
    return [(r, next((folder / "audio").glob(f"{r['clip_id']}.*"))) for r in rows]


def write_variants(clips: list[tuple[dict, Path]], folder: Path) -> None:
    """Every clip as `<clip_id>__<variant>.<ext>`: the file itself and each user distortion."""
    for truth, path in clips:
        (folder / f"{truth['clip_id']}__{CLEAN}{path.suffix}").symlink_to(path.resolve())
        x_n = load_audio(path)
        for distortion in demo_augment.USER_FILE_DISTORTIONS:
            demo_augment.write_user_file(x_n, SAMPLE_RATE, distortion,
                                         folder / f"{truth['clip_id']}__{distortion}")


def ask(model: Path, folder: Path, question: str, output: Path,
        extra: list[str]) -> dict[tuple[str, str], str]:
    """{(clip_id, variant): answer} from the product's infer command over `folder`."""
    subprocess.run([sys.executable, "-m", "llark_jax", "infer", "--checkpoint", str(model),
                    "--audio-dir", str(folder), "--question", question, "--output", str(output),
                    *extra], check=True, cwd=REPO)
    answers = {}
    for line in output.read_text().splitlines():
        row = json.loads(line)
        clip_id, variant = row["clip_id"].split("__")
        answers[clip_id, variant] = row["answer"]
    return answers


def same_share(answers: list[str], clean: list[str], parse) -> float:
    """Share of answers whose parsed value equals that of the undistorted file's answer."""
    same = [parse(strip_completion(a)) == parse(strip_completion(c))
            for a, c in zip(answers, clean, strict=True)]
    return sum(same) / len(same)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="runs/demo", help="a finished `make demo` workdir")
    parser.add_argument("--set", choices=sorted(SETS), default="eval")
    parser.add_argument("--n-clips", type=int, default=None, help="the first N (default: all)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="infer's, if given")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    extra = [] if args.max_new_tokens is None else ["--max-new-tokens", str(args.max_new_tokens)]
    clips = set_clips(workdir, args.set, args.n_clips)
    truth = {r["clip_id"]: r for r, _ in clips}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "audio"
        folder.mkdir()
        write_variants(clips, folder)
        answers = {task: ask(workdir / "model", folder, q, Path(tmp) / f"{task}.jsonl", extra)
                   for task, q in QUESTIONS.items()}
    ids = sorted(truth)
    rows = {}
    for variant in (CLEAN, *demo_augment.USER_FILE_DISTORTIONS):
        key = [answers["key"][c, variant] for c in ids]
        tempo = [answers["tempo"][c, variant] for c in ids]
        rows[variant] = {
            "key_mirex": key_mirex(key, [truth[c]["key"] for c in ids]).value,
            "tempo_acc2": tempo_accuracy(tempo, [truth[c]["tempo"] for c in ids])[
                "tempo_acc2"].value,
            "key_same": same_share(key, [answers["key"][c, CLEAN] for c in ids], parse_key),
            "tempo_same": same_share(tempo, [answers["tempo"][c, CLEAN] for c in ids],
                                     parse_tempo),
        }
    print(f"{args.set} set, {len(ids)} clips: own score and share of answers equal to the "
          f"undistorted file's")
    print(f"{'variant':<14} {'key MIREX':>9} {'key same':>8} {'tempo Acc2':>10} {'tempo same':>10}")
    for variant, r in rows.items():
        print(f"{variant:<14} {r['key_mirex']:>9.3f} {r['key_same']:>8.2f} "
              f"{r['tempo_acc2']:>10.3f} {r['tempo_same']:>10.2f}")
    emit({"set": args.set, "n_clips": len(ids), "variants": rows}, args.json)


if __name__ == "__main__":
    main()
