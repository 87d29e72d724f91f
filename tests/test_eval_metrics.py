"""Metric values on hand-computed cases; intervals against known values."""

import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from llark_jax.eval.intervals import (
    BOOTSTRAP,
    CLOPPER_PEARSON,
    bootstrap_interval,
    clopper_pearson,
    mean_result,
    proportion_result,
)
from llark_jax.eval.metrics import instrument_f1, key_mirex, tempo_accuracy, tempo_hits


def test_clopper_pearson_known_values():
    # closed forms at the boundaries: (alpha/2)^(1/n)
    assert clopper_pearson(0, 10)[1] == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)
    assert clopper_pearson(10, 10)[0] == pytest.approx(0.025 ** (1 / 10), abs=1e-9)
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    # textbook value for 5/10: (0.1871, 0.8129)
    low, high = clopper_pearson(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.1871, 0.8129)
    # scipy's independent implementation of the exact interval
    for k, n in [(1, 7), (37, 98), (558, 1000), (0, 3)]:
        ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert clopper_pearson(k, n) == pytest.approx((ref.low, ref.high), abs=1e-9)
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(11, 10)


def test_bootstrap_interval_matches_normal_theory():
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, size=2000)
    low, high = bootstrap_interval(len(x), lambda idx: float(x[idx].mean()), 1000, seed=3)
    half_width = 1.96 * x.std() / np.sqrt(len(x))
    assert low < x.mean() < high
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    const = mean_result("c", [0.5] * 20)
    assert const.ci95 == (0.5, 0.5) and const.interval == BOOTSTRAP


def test_result_type_is_uniform_and_dict_like():
    result = proportion_result("acc", [True, False, True, True])
    assert result.value == 0.75 and result.n == 4 and result.interval == CLOPPER_PEARSON
    assert result["value"] == 0.75 and result["successes"] == 3
    assert result.to_dict()["ci95"] == list(clopper_pearson(3, 4))


def test_key_mirex_hand_computed():
    answers = [
        "The key is C major.",  # same: 1.0
        "G major",  # fifth above: 0.5
        "A minor",  # relative: 0.3
        "C minor",  # parallel: 0.2
        "F# major",  # other: 0
        "I don't know",  # unparsed: 0
    ]
    result = key_mirex(answers, ["C major"] * 6)
    assert result.value == pytest.approx(2.0 / 6)
    assert result.n == 6 and result["n_unparsed"] == 1
    assert result["relations"] == {
        "same": 1, "fifth": 1, "relative": 1, "parallel": 1, "other": 1, "unparsed": 1
    }  # fmt: skip
    assert result["exact_accuracy"] == pytest.approx(1 / 6)


def test_key_invalid_label_is_skipped_and_counted():
    result = key_mirex(["C major", "C major"], ["C major", "not a key"])
    assert result.n == 1 and result.value == 1.0 and result["invalid_labels"] == [1]
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        key_mirex(["a", "b"], ["C major"])


def test_tempo_hand_computed():
    answers = ["103 BPM", "105 BPM", "200 BPM", "49 bpm", "33 bpm", "no idea", "100"]
    labels = [100, 100, 100, 100, 100, 100, 0]  # last label invalid -> excluded
    results = tempo_accuracy(answers, labels)
    acc1, acc2 = results["tempo_acc1"], results["tempo_acc2"]
    assert acc1.n == acc2.n == 6
    assert acc1.value == pytest.approx(1 / 6) and acc2.value == pytest.approx(4 / 6)
    assert acc1["n_unparsed"] == 1 and acc1["excluded_labels"] == [6]
    assert acc2.ci95 == clopper_pearson(4, 6)


@pytest.mark.parametrize(
    ("estimate", "expected"),
    [(104.0, (True, True)), (104.1, (False, False)), (208.0, (False, True)),
     (51.9, (False, True)), (301.0, (False, True)), (34.6, (False, True)), (None, (False, False))],
)  # fmt: skip
def test_tempo_tolerance_edges(estimate, expected):
    assert tempo_hits(estimate, 100.0) == expected


def test_instrument_f1_hand_computed_and_reference_bug_fixed():
    answers = ["Piano and guitar.", "Violin.", "A bassoon.", "No drums at all, just vocals"]
    labels = [["piano", "drums"], ["Violin1"], ["bass"], ["vocals"]]
    results = instrument_f1(answers, labels, vocabulary=["bassoon", "guitar"])
    micro, clip = results["instruments_micro_f1"], results["instruments_clip_f1"]
    # tp: piano, violin, vocals = 3; fp: guitar, bassoon = 2; fn: drums, bass = 2
    assert (micro["tp"], micro["fp"], micro["fn"]) == (3, 2, 2)
    assert micro.value == pytest.approx(6 / 10)
    # clip F1: 2/4, 1, 0, 1
    assert clip.value == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    # the reference assigned (not accumulated) fn: only the last clip's fn (0) would count -> 6/8
    assert micro.value < 6 / 8
    assert micro.interval == BOOTSTRAP and micro.ci95[0] <= micro.value <= micro.ci95[1]


def test_eval_and_infer_import_without_torch():
    code = (
        "import sys, llark_jax.eval.cli, llark_jax.eval.genre, llark_jax.eval.metrics, "
        "llark_jax.eval.captions, llark_jax.eval.report, llark_jax.eval.judge, "
        "llark_jax.infer.cli, llark_jax.infer.answer, llark_jax.infer.generate; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_instrument_label_map_drops_and_merges():
    answers = ["Mandolin and tabla, with a drum machine.", "A lap steel guitar."]
    labels = [["Mandolin", "Tabla", "Drum Machine"], ["lap steel guitar"]]
    label_map = {"mandolin": "guitar", "tabla": None, "drum machine": "drums",
                 "lap steel guitar": "guitar"}  # fmt: skip
    results = instrument_f1(answers, labels, label_map=label_map)
    micro = results["instruments_micro_f1"]
    # clip 1: truth {guitar, drums}; "mandolin" is not a guitar alias -> guitar missed, drums hit
    assert micro["vocabulary"] == ["drums", "guitar"]
    assert (micro["tp"], micro["fp"], micro["fn"]) == (2, 0, 1)
