"""MusiLingo's two conversation templates (as data) on a real local BPE tokenizer: exact layout,
labels that decode to exactly the supervised part, the fixed audio position and the answer caps."""

import numpy as np
import pytest
from tokenizer_fixtures import make_llark_tokenizer

from llark_jax.data import conversation as conv

Q = "What is the tempo of this song?"
A = "The tempo is 120 BPM."
LONG = " ".join(["a slow groove with bright drums and warm strings"] * 40)


@pytest.fixture(scope="module")
def tok():
    return make_llark_tokenizer()


def _supervised_text(tok, ex) -> str:
    keep = ex["labels"] != conv.IGNORE_INDEX
    np.testing.assert_array_equal(ex["labels"][keep], ex["input_ids"][keep])
    sup = np.flatnonzero(keep)  # one contiguous block at the very end
    assert sup[-1] == len(ex["input_ids"]) - 1 and np.all(np.diff(sup) == 1)
    return tok.decode(ex["input_ids"][keep])


def _check_patches(tok, ex, frames):
    ids = conv.AudioTokenIds.from_tokenizer(tok)
    assert ids.start not in ex["input_ids"] and ids.end not in ex["input_ids"]  # no markers
    for start, n in zip(ex["audio_patch_starts"], frames, strict=True):
        assert np.all(ex["input_ids"][start : start + n] == ids.patch)
    assert int(np.sum(ex["input_ids"] == ids.patch)) == sum(frames)


@pytest.mark.parametrize("audio_first", [True, False])  # the template fixes audio first
def test_musilingo_stage2_layout_and_supervision(tok, audio_first):
    template = conv.get_template("musilingo")
    ex = conv.build_example(tok, template, Q, A, 3, audio_first)
    assert tok.decode(ex["input_ids"]) == (
        f"<s>###Human: <Audio>{'<audio_patch>' * 3}</Audio> {Q} ###Assistant: {A}###")
    assert _supervised_text(tok, ex) == f"{A}###"
    _check_patches(tok, ex, [3])
    assert ex["answer_capped"] == 0 and ex["truncated"] == 0
    assert tok.decode(conv.stop_ids(tok, template)) == "###"

    two = conv.build_example(tok, template, Q, A, [2, 4], audio_first)  # several clips
    assert tok.decode(two["input_ids"]).startswith(
        f"<s>###Human: <Audio>{'<audio_patch>' * 6}</Audio> {Q} ")
    _check_patches(tok, two, [2, 4])


def test_musilingo_caption_stage1_layout_and_supervision(tok):
    template = conv.get_template("musilingo_caption")
    ex = conv.build_example(tok, template, "", A, 4, False)  # LP-MusicCaps: question ""
    assert tok.decode(ex["input_ids"]) == f"<s>{'<audio_patch>' * 4}{A}\n"
    assert _supervised_text(tok, ex) == f"{A}\n"
    _check_patches(tok, ex, [4])
    assert tok.decode(conv.stop_ids(tok, template)) == "\n"


@pytest.mark.parametrize("name, cap, suffix", [("musilingo", 160, "###"),
                                               ("musilingo_caption", 32, "\n")])
def test_answer_caps_keep_the_supervised_suffix(tok, name, cap, suffix):
    template = conv.get_template(name)
    assert template.max_answer_tokens == cap
    answer_ids = tok.encode(LONG, add_special_tokens=False)
    assert len(answer_ids) > cap
    ex = conv.build_example(tok, template, Q, LONG, 2, True)
    assert ex["answer_capped"] == len(answer_ids) - cap and ex["truncated"] == 0
    assert _supervised_text(tok, ex) == tok.decode(answer_ids[:cap]) + suffix
    n_suffix = len(tok.encode(suffix, add_special_tokens=False))
    assert int(np.sum(ex["labels"] != conv.IGNORE_INDEX)) == cap + n_suffix


def test_musilingo_config_stages_select_the_templates():
    from pathlib import Path

    from llark_jax.config import load_config

    path = Path(__file__).resolve().parents[1] / "configs" / "musilingo.py"
    names = {stage: load_config(f"{path}:{stage}").data.template
             for stage in ("caption", "instruct")}
    assert names == {"caption": "musilingo_caption", "instruct": "musilingo"}
    assert all(conv.get_template(n).name == n for n in names.values())
