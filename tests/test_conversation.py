"""Segment-wise ids and label masks of llark_jax.data.conversation on a real local BPE tokenizer."""

import numpy as np
import pytest
from tokenizer_fixtures import make_llark_tokenizer

from llark_jax.data import conversation as conv

Q = "What is the tempo of this song?"
A = "The tempo is 120 BPM."


@pytest.fixture(scope="module")
def tok():
    return make_llark_tokenizer()


def _supervised_text(tok, ex):
    keep = ex["labels"] != conv.IGNORE_INDEX
    np.testing.assert_array_equal(ex["labels"][keep], ex["input_ids"][keep])
    return tok.decode(ex["input_ids"][keep])


def _audio_block(n):
    return "<audio_start>" + "<audio_patch>" * n + "<audio_end>"


@pytest.mark.parametrize("audio_first", [True, False])
def test_fastchat_supervises_exactly_the_assistant_turn(tok, audio_first):
    ex = conv.build_example(tok, conv.FASTCHAT_V0, Q, A, 7, audio_first)
    assert ex["input_ids"].dtype == np.int32 and ex["labels"].shape == ex["input_ids"].shape
    assert _supervised_text(tok, ex) == f"### Assistant: {A}\n### "
    human = f"{_audio_block(7)}\n{Q}" if audio_first else f"{Q}\n{_audio_block(7)}"
    full = f"<s>{conv.REFERENCE_SYSTEM_PROMPT}\n\n### Human: {human}\n### Assistant: {A}\n### "
    assert tok.decode(ex["input_ids"]) == full
    # the supervised span is one contiguous block at the end
    sup = np.flatnonzero(ex["labels"] != conv.IGNORE_INDEX)
    assert sup[-1] == len(ex["input_ids"]) - 1 and np.all(np.diff(sup) == 1)
    ids = conv.AudioTokenIds.from_tokenizer(tok)
    (start,) = ex["audio_patch_starts"]
    assert ex["input_ids"][start - 1] == ids.start and ex["input_ids"][start + 7] == ids.end
    assert np.all(ex["input_ids"][start : start + 7] == ids.patch)
    assert ex["n_audio_segments"] == 1 and ex["audio_frames"] == [7]


def test_reference_plus_two_quirk_variant(tok):
    ex = conv.build_example(tok, conv.FASTCHAT_V0_REFERENCE_MASK, Q, A, 3, True)
    assert _supervised_text(tok, ex) == f"###### Assistant: {A}\n### "
    plain = conv.build_example(tok, conv.FASTCHAT_V0, Q, A, 3, True)
    assert tok.decode(ex["input_ids"]) == tok.decode(plain["input_ids"])


def test_llama2_inst_template(tok):
    ex = conv.build_example(tok, conv.LLAMA2_INST, Q, A, 2, False, turns=[("Key?", "A minor.")])
    assert _supervised_text(tok, ex) == f"{A} </s>A minor. </s>"
    expected = (
        f"<s>[INST] <<SYS>>\n{conv.REFERENCE_SYSTEM_PROMPT}\n<</SYS>>\n\n{Q}\n{_audio_block(2)}"
        f" [/INST] {A} </s><s>[INST] Key? [/INST] A minor. </s>"
    )
    assert tok.decode(ex["input_ids"]) == expected


@pytest.mark.parametrize("audio_first", [True, False])
def test_tokenizer_chat_template_matches_its_own_rendering(tok, audio_first):
    template = conv.get_template("tokenizer", tok)
    ex = conv.build_example(tok, template, Q, A, 4, audio_first, turns=[("Key?", "A minor.")])
    user = f"{_audio_block(4)}\n{Q}" if audio_first else f"{Q}\n{_audio_block(4)}"
    messages = [
        {"role": "system", "content": conv.REFERENCE_SYSTEM_PROMPT},
        {"role": "user", "content": user},
        {"role": "assistant", "content": A},
        {"role": "user", "content": "Key?"},
        {"role": "assistant", "content": "A minor."},
    ]
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(messages, tokenize=False)
    assert _supervised_text(tok, ex) == f"{A}<|im_end|>\nA minor.<|im_end|>\n"
    assert list(ex["input_ids"][-len(conv.stop_ids(tok, template)) :]) == conv.stop_ids(
        tok, template
    )


def test_multi_turn_and_multi_segment_fastchat(tok):
    ex = conv.build_example(
        tok, conv.FASTCHAT_V0, Q, A, [3, 5], True, turns=[("And the key?", "A minor.")]
    )
    assert _supervised_text(tok, ex) == f"### Assistant: {A}\n### Assistant: A minor.\n### "
    assert ex["n_audio_segments"] == 2 and ex["audio_frames"] == [3, 5]
    s0, s1 = ex["audio_patch_starts"]
    assert s1 == s0 + 3 + 2  # end of block 0, start of block 1
    assert f"### Human: {_audio_block(3)}{_audio_block(5)}\n{Q}\n" in tok.decode(ex["input_ids"])


def test_truncation_cuts_answer_never_audio(tok):
    full = conv.build_example(tok, conv.FASTCHAT_V0, Q, A, 50, False)
    n = len(full["input_ids"])
    cut = conv.build_example(tok, conv.FASTCHAT_V0, Q, A, 50, False, max_len=n - 4)
    assert cut["truncated"] == 4 and len(cut["input_ids"]) == n - 4
    np.testing.assert_array_equal(cut["input_ids"], full["input_ids"][: n - 4])
    np.testing.assert_array_equal(cut["labels"], full["labels"][: n - 4])
    n_answer = len(tok.encode(A + "\n### ", add_special_tokens=False))
    prompt_len = n - n_answer
    ok = conv.build_example(tok, conv.FASTCHAT_V0, Q, A, 50, False, max_len=prompt_len + 1)
    assert len(ok["input_ids"]) == prompt_len + 1
    with pytest.raises(conv.ExampleTooLong) as err:
        conv.build_example(tok, conv.FASTCHAT_V0, Q, A, 50, False, max_len=prompt_len)
    assert err.value.prompt_len == prompt_len and err.value.max_len == prompt_len


def test_audio_first_for_is_seeded_and_balanced():
    draws = [conv.audio_first_for(0, f"clip{i}/qa0") for i in range(2000)]
    assert draws == [conv.audio_first_for(0, f"clip{i}/qa0") for i in range(2000)]
    assert 900 < sum(draws) < 1100
    assert draws != [conv.audio_first_for(1, f"clip{i}/qa0") for i in range(2000)]


def test_audio_frame_index_and_errors(tok):
    ex = conv.build_example(tok, conv.FASTCHAT_V0, Q, A, [3, 2], True)
    idx = conv.audio_frame_index(
        40 + len(ex["input_ids"]), ex["audio_patch_starts"], ex["audio_frames"], 4,
        offset=40, first_segment=1,
    )
    s0, s1 = (40 + s for s in ex["audio_patch_starts"])
    np.testing.assert_array_equal(idx[s0 : s0 + 3], [4, 5, 6])
    np.testing.assert_array_equal(idx[s1 : s1 + 2], [8, 9])
    assert idx.sum() == 4 + 5 + 6 + 8 + 9
    with pytest.raises(ValueError, match="T_a=2"):
        conv.audio_frame_index(100, ex["audio_patch_starts"], ex["audio_frames"], 2)
    with pytest.raises(KeyError, match="unknown conversation template"):
        conv.get_template("vicuna")
    from tokenizer_fixtures import make_base_tokenizer

    with pytest.raises(KeyError, match="audio tokens"):
        conv.build_example(make_base_tokenizer(), conv.FASTCHAT_V0, Q, A, 1, True)
