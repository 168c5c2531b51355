"""Evaluation metrics, figures and rich tables, against hand-computed values."""

import json
import math
import warnings

import numpy as np
import pytest
from rich.console import Console

from lmreason.evaluation.metrics import (
    classification_metrics,
    expected_calibration_error,
    gap_table,
    reliability_bins,
    slice_metrics,
)
from lmreason.evaluation.plots import confusion_figure, reliability_figure, save_figure
from lmreason.evaluation.report import gap_rich_table, metrics_table, slices_table

NAMES = ["a", "b", "c"]
# 7 rows. Predictions:      a  a  b | b  a | c  b
LABELS = np.array([0, 0, 0, 1, 1, 2, 2])
PREDS = np.array([0, 0, 1, 1, 0, 2, 1])


def _probs_for(preds, n_classes=3, confidence=0.6):
    """One-peak rows: `confidence` on the predicted class, the rest split evenly."""
    probs = np.full((len(preds), n_classes), (1 - confidence) / (n_classes - 1))
    probs[np.arange(len(preds)), preds] = confidence
    return probs


def _render(table, **console_kwargs) -> str:
    console = Console(record=True, width=120, **console_kwargs)
    console.print(table)
    return console.export_text(styles=bool(console_kwargs))


def test_hand_computed_three_class_example():
    m = classification_metrics(LABELS, _probs_for(PREDS), NAMES)
    # Confusion (rows true, cols predicted): a -> [2,1,0], b -> [1,1,0], c -> [0,1,1].
    assert m["confusion"] == [[2, 1, 0], [1, 1, 0], [0, 1, 1]]
    # Column sums (times predicted): a 3, b 3, c 1. Row sums (support): a 3, b 2, c 2.
    # a: P = 2/3, R = 2/3, F1 = 2/3
    # b: P = 1/3, R = 1/2, F1 = 2*(1/6)/(5/6) = 2/5
    # c: P = 1/1, R = 1/2, F1 = 2*(1/2)/(3/2) = 2/3
    expected = {"a": (2 / 3, 2 / 3, 2 / 3, 3), "b": (1 / 3, 1 / 2, 2 / 5, 2), "c": (1.0, 1 / 2, 2 / 3, 2)}
    for name, (p, r, f1, support) in expected.items():
        row = m["per_class"][name]
        assert row["precision"] == pytest.approx(p)
        assert row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(f1)
        assert row["support"] == support
    assert m["f1_macro"] == pytest.approx((2 / 3 + 2 / 5 + 2 / 3) / 3)  # 0.5778
    assert m["n"] == 7
    assert m["acc"] == pytest.approx(4 / 7)
    assert m["majority_baseline"] == pytest.approx(3 / 7)  # always "a"
    # Every row has confidence 0.6 (one bin), accuracy 4/7: ECE = |4/7 - 0.6|.
    assert m["ece"] == pytest.approx(abs(4 / 7 - 0.6))
    # True-class probability is 0.6 on the 4 correct rows and 0.2 on the 3 wrong ones.
    assert m["loss"] == pytest.approx(-(4 * math.log(0.6) + 3 * math.log(0.2)) / 7)
    assert m["label_names"] == NAMES
    json.dumps(m)  # plain Python types only


def test_given_loss_is_reported_unchanged():
    assert classification_metrics(LABELS, _probs_for(PREDS), NAMES, loss=1.25)["loss"] == 1.25


def test_zero_probability_loss_is_finite():
    probs = np.array([[1.0, 0.0], [0.0, 1.0]])
    m = classification_metrics([1, 1], probs, ["x", "y"])
    assert math.isfinite(m["loss"]) and m["loss"] > 10  # clipped at 1e-12, not inf


def test_zero_support_and_never_predicted_classes_give_zeros_without_warnings():
    # Class "c" is never true; class "b" is never predicted; "d" is neither.
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 2, 0, 0])
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        m = classification_metrics(labels, _probs_for(preds, n_classes=4), ["a", "b", "c", "d"])
    # a: P = 1/3, R = 1/2, F1 = 2*(1/6)/(5/6) = 0.4; b, c, d: all 0.
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.4)
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Macro averages over all four names, absent ones included (sklearn with labels=...).
    assert m["f1_macro"] == pytest.approx(0.4 / 4)
    assert not any(math.isnan(v) for row in m["per_class"].values() for v in row.values())


@pytest.mark.parametrize(
    "labels, probs, names, match",
    [
        ([], np.zeros((0, 2)), ["x", "y"], "zero examples"),
        ([0, 1], np.full((2, 3), 1 / 3), ["x", "y"], "3 columns"),
        ([0, 2], np.full((2, 2), 0.5), ["x", "y"], "must lie in"),
        ([0, 1], np.full((2, 2), 0.5), ["x", "x"], "unique"),
        ([0.0, 1.0], np.full((2, 2), 0.5), ["x", "y"], "integers"),
    ],
)
def test_bad_inputs_raise(labels, probs, names, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(labels, probs, names)


def test_ece_zero_when_perfectly_calibrated():
    # 10 rows at 0.8 with 8 correct, 10 at 0.3 with 3 correct: each bin's accuracy equals its confidence.
    confidence = np.array([0.8] * 10 + [0.3] * 10)
    correct = np.array([1] * 8 + [0] * 2 + [1] * 3 + [0] * 7)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.0)


def test_ece_overconfident():
    # Claims 0.9, right half the time: ECE = 0.4. Plus 4 rows at 0.55 all right: |1 - 0.55| = 0.45.
    confidence = np.array([0.9] * 6 + [0.55] * 4)
    correct = np.array([1, 0, 1, 0, 1, 0] + [1] * 4)
    assert expected_calibration_error(confidence, correct) == pytest.approx(0.6 * 0.4 + 0.4 * 0.45)


def test_reliability_bins_edges_and_empty_bins():
    # Bins are right-closed: 0.2 belongs to (0, 0.2], 1.0 to the last bin, 0.0 to the first.
    bins = reliability_bins([0.0, 0.2, 0.21, 1.0], [1, 0, 1, 1], n_bins=5)
    assert [b["count"] for b in bins] == [2, 1, 0, 0, 1]
    assert bins[0] == {"lo": 0.0, "hi": 0.2, "count": 2, "accuracy": 0.5, "confidence": pytest.approx(0.1)}
    assert bins[2]["accuracy"] is None and bins[2]["confidence"] is None
    with pytest.raises(ValueError):
        reliability_bins([0.5], [1], n_bins=0)


def test_slice_metrics_groups_mixed_types():
    values = [1, "long", None, 1, "long", None, 2.5]
    slices = slice_metrics(LABELS, _probs_for(PREDS), values, NAMES)
    # Numbers first in numeric order, then the rest alphabetically.
    assert list(slices) == ["1", "2.5", "None", "long"]
    # Rows 0 and 3: labels a, b predicted a, b -> both right.
    assert slices["1"]["n"] == 2 and slices["1"]["acc"] == 1.0
    # Rows 1 and 4: a -> a right, b -> a wrong.
    assert slices["long"]["n"] == 2 and slices["long"]["acc"] == 0.5
    # Rows 2 and 5: a -> b wrong, c -> c right.
    assert slices["None"]["acc"] == 0.5
    # one gold class: macro-F1 is not shown (None), accuracy is
    assert slices["2.5"] == {"n": 1, "acc": 0.0, "f1_macro": None, "ece": pytest.approx(0.6)}
    assert sum(s["n"] for s in slices.values()) == len(LABELS)


def test_slice_metrics_sorts_numbers_numerically():
    slices = slice_metrics(LABELS, _probs_for(PREDS), [10, 2, 1, 10, 2, 1, 3], NAMES)
    assert list(slices) == ["1", "2", "3", "10"]
    with pytest.raises(ValueError, match="slice column"):
        slice_metrics(LABELS, _probs_for(PREDS), [1, 2], NAMES)


def test_gap_table_and_missing_values():
    gap = gap_table({"acc": 0.9, "ece": 0.05, "loss": 0.3}, {"acc": 0.7, "ece": 0.15, "loss": None})
    assert gap["acc"] == {
        "in_distribution": 0.9,
        "ood": 0.7,
        "gap": pytest.approx(0.2),
        "ood_worse_by": pytest.approx(0.2),
        "worse": "ood",
    }
    # ECE rises OOD: the raw gap is negative, but "OOD worse by" has the same sign as for accuracy
    assert gap["ece"]["gap"] == pytest.approx(-0.1)
    assert gap["ece"]["ood_worse_by"] == pytest.approx(0.1) and gap["ece"]["worse"] == "ood"
    better = gap_table({"acc": 0.6, "loss": 0.5}, {"acc": 0.8, "loss": 0.2}, keys=("acc", "loss"))
    assert better["acc"]["worse"] == better["loss"]["worse"] == "in_distribution"
    assert better["acc"]["ood_worse_by"] < 0 and better["loss"]["ood_worse_by"] < 0
    assert gap["loss"]["gap"] is None and gap["f1_macro"]["in_distribution"] is None


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5_000


def test_figures_write_png(tmp_path):
    m = classification_metrics(LABELS, _probs_for(PREDS), NAMES)
    _assert_png(save_figure(confusion_figure(m["confusion"], NAMES, "test"), tmp_path / "cm.png"))
    bins = reliability_bins([0.95, 0.9, 0.7, 0.6, 0.4], [1, 0, 1, 1, 0], n_bins=10)
    _assert_png(save_figure(reliability_figure(bins, 0.2, "test"), tmp_path / "sub" / "rel.png"))


def test_confusion_figure_many_classes_and_bad_shape(tmp_path):
    names = [f"class_{k}" for k in range(21)]  # just past the annotation limit
    confusion = np.eye(21, dtype=int) * 5
    _assert_png(save_figure(confusion_figure(confusion, names, "many"), tmp_path / "many.png"))
    with pytest.raises(ValueError):
        confusion_figure([[1, 0], [0, 1]], NAMES, "bad")


def test_metrics_table_renders_numbers():
    m = classification_metrics(LABELS, _probs_for(PREDS), NAMES)
    text = _render(metrics_table(m, "test"))
    for expected in ("acc=0.5714", "f1_macro=0.5778", "majority=0.4286", "0.400", "0.667", "macro avg"):
        assert expected in text


def test_slices_table_renders_rows():
    slices = slice_metrics(LABELS, _probs_for(PREDS), [10, 2, 1, 10, 2, 1, 3], NAMES)
    text = _render(slices_table(slices, "hops"))
    assert "hops" in text and "1.0000" in text
    assert text.index(" 2 ") < text.index(" 10 ")  # numeric order survives rendering


def test_gap_table_colours_ood_worse_red():
    gap = gap_table({"acc": 0.9, "ece": 0.05}, {"acc": 0.7, "ece": 0.02}, keys=("acc", "ece"))
    table = gap_rich_table(gap, id_name="test", ood_name="ood_long")
    text = _render(table)
    # one sign for every metric: positive = OOD worse
    assert "OOD (ood_long)" in text and "+0.2000" in text and "-0.0300" in text
    assert "OOD worse" in text and "OOD better" in text
    coloured = _render(table, force_terminal=True, color_system="standard")
    assert "\x1b[31m+0.2000" in coloured  # acc fell OOD: worse, red
    assert "\x1b[32m-0.0300" in coloured  # ece fell OOD: better, green
