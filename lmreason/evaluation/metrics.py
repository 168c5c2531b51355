"""Classification metrics: accuracy, F1 (scikit-learn), calibration, slices, OOD gaps.

Every function returns plain Python floats/ints/lists/dicts so the result can go
straight into ``metrics.json``. Predictions are ``argmax(probs)`` (ties go to the
lowest class index) and confidence is ``max(probs)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

# Probabilities are clipped before the log so one confidently wrong row gives a
# large but finite loss (-log(1e-12) ~ 27.6) instead of inf.
_PROB_FLOOR = 1e-12


def _check_inputs(labels, probs, label_names) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Validate and convert; returns (labels (N,), probs (N, C), names).

    Raises:
        ValueError: on empty input, bad shapes, duplicate names, or labels outside [0, C).
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    names = [str(name) for name in label_names]
    if labels.ndim != 1 or probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"expected labels (N,) and probs (N, C); got {labels.shape} and {probs.shape}")
    if labels.shape[0] == 0:
        raise ValueError("cannot compute metrics on zero examples")
    if probs.shape[1] != len(names):
        raise ValueError(f"probs has {probs.shape[1]} columns but {len(names)} label names were given")
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be unique; got {names}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers; got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= len(names):
        raise ValueError(f"labels must lie in [0, {len(names)}); got min {labels.min()}, max {labels.max()}")
    return labels.astype(np.int64), probs, names


def _confusion_and_prf(labels: np.ndarray, preds: np.ndarray, n_classes: int):
    """scikit-learn's confusion matrix (C, C) (rows = true class, columns = predicted class) and per-class
    precision, recall, F1 and support, each (C,), over every class 0..C-1; 0 where undefined (zero_division=0)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    classes = list(range(n_classes))
    confusion = confusion_matrix(labels, preds, labels=classes)
    precision, recall, f1, support = precision_recall_fscore_support(labels, preds, labels=classes, zero_division=0)
    return confusion, precision, recall, f1, support


def _bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: bin k covers (k/n, (k+1)/n], bin 0 also takes 0."""
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    # side="left" puts a value equal to an edge into the lower bin, i.e. right-closed bins.
    return np.searchsorted(inner_edges, confidence, side="left")


def reliability_bins(confidence, correct, n_bins: int = 15) -> list[dict]:
    """Per-bin accuracy and mean confidence over ``n_bins`` equal-width bins on [0, 1].

    Returns one dict per bin, in order: ``{"lo", "hi", "count", "accuracy", "confidence"}``.
    Empty bins are kept (so plots have a fixed x-axis) with ``accuracy`` and
    ``confidence`` set to None.

    Raises:
        ValueError: if ``n_bins < 1`` or the two arrays differ in length.
    """
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1; got {n_bins}")
    if confidence.shape != correct.shape:
        raise ValueError(f"confidence and correct differ in length: {confidence.shape} vs {correct.shape}")
    index = _bin_index(confidence, n_bins)
    counts = np.bincount(index, minlength=n_bins)
    hits = np.bincount(index, weights=correct, minlength=n_bins)
    conf_sums = np.bincount(index, weights=confidence, minlength=n_bins)
    bins = []
    for k in range(n_bins):
        count = int(counts[k])
        bins.append(
            {
                "lo": k / n_bins,
                "hi": (k + 1) / n_bins,
                "count": count,
                "accuracy": float(hits[k] / count) if count else None,
                "confidence": float(conf_sums[k] / count) if count else None,
            }
        )
    return bins


def expected_calibration_error(confidence, correct, n_bins: int = 15) -> float:
    """ECE: sum over bins of (bin count / N) * |accuracy - mean confidence|; 0.0 for no rows.

    Raises:
        ValueError: as :func:`reliability_bins`.
    """
    bins = reliability_bins(confidence, correct, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        return 0.0
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"]))


def classification_metrics(labels, probs, label_names: Sequence[str], loss: float | None = None) -> dict:
    """Headline and per-class metrics for one split.

    ``labels`` is an int array (N,), ``probs`` a float array (N, C) whose rows sum
    to 1, ``label_names`` the C class names in column order. ``loss`` is reported
    as given; when None it is the mean negative log-likelihood of the true class
    under ``probs`` (probabilities clipped at 1e-12).

    ``f1_macro`` averages per-class F1 over *all* ``label_names``, like sklearn's
    ``f1_score(..., labels=range(C), average="macro")``: a class that is neither
    present nor predicted counts as F1 = 0. Undefined precision/recall/F1
    (no predictions / no support) are 0, never NaN.

    Returns keys ``n, acc, f1_macro, ece, loss, majority_baseline, per_class,
    confusion, label_names``; ``per_class`` maps name to
    ``{precision, recall, f1, support}`` and ``confusion`` is a list of rows
    (rows = true class, columns = predicted class).

    Raises:
        ValueError: on empty input, mismatched shapes, duplicate label names, or
            labels outside [0, C).
    """
    labels, probs, names = _check_inputs(labels, probs, label_names)
    n_classes = len(names)
    preds = probs.argmax(axis=1)  # (N,)
    confidence = probs.max(axis=1)  # (N,)
    correct = preds == labels  # (N,)

    confusion, precision, recall, f1, support = _confusion_and_prf(labels, preds, n_classes)
    if loss is None:
        true_prob = probs[np.arange(len(labels)), labels]
        loss = float(-np.log(np.clip(true_prob, _PROB_FLOOR, 1.0)).mean())

    return {
        "n": int(len(labels)),
        "acc": float(correct.mean()),
        "f1_macro": float(f1.mean()),
        "ece": expected_calibration_error(confidence, correct),
        "loss": float(loss),
        "majority_baseline": float(support.max() / len(labels)),
        "per_class": {
            name: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": int(support[k]),
            }
            for k, name in enumerate(names)
        },
        "confusion": confusion.tolist(),
        "label_names": names,
    }


def slice_sort_key(key: str) -> tuple:
    """Numeric keys first in numeric order (NaN last among them), then the rest alphabetically."""
    try:
        value = float(key)
    except ValueError:
        return (1, 0, 0.0, key)
    return (0, math.isnan(value), 0.0 if math.isnan(value) else value, key)


def slice_metrics(labels, probs, slice_values: Sequence, label_names: Sequence[str]) -> dict[str, dict]:
    """``n, acc, f1_macro, ece`` for each group of rows sharing a value of a metadata column.

    Groups are keyed by ``str(value)`` (so None becomes ``"None"``, and 1 and
    1.0 are different groups). Keys whose text is a number come first in numeric
    order (so 2 sorts before 10), the rest follow alphabetically. ``f1_macro``
    averages over the classes present in the slice (as gold labels or as
    predictions); it is None for a slice whose gold labels are all one class,
    where a macro-F1 says nothing that ``acc`` does not (and misleads: one
    wrong prediction adds a second class with F1 0 and halves it).

    Raises:
        ValueError: if ``slice_values`` does not have one value per row, or as
            :func:`classification_metrics`.
    """
    labels, probs, names = _check_inputs(labels, probs, label_names)
    keys = [str(value) for value in slice_values]
    if len(keys) != len(labels):
        raise ValueError(f"slice column has {len(keys)} values but there are {len(labels)} rows")
    rows_by_key: dict[str, list[int]] = {}
    for row, key in enumerate(keys):
        rows_by_key.setdefault(key, []).append(row)

    slices = {}
    for key in sorted(rows_by_key, key=slice_sort_key):
        rows = np.asarray(rows_by_key[key])
        m = classification_metrics(labels[rows], probs[rows], names)
        gold = set(labels[rows].tolist())
        present = gold | set(probs[rows].argmax(axis=1).tolist())
        f1s = [m["per_class"][names[c]]["f1"] for c in sorted(present)]
        f1_macro = float(np.mean(f1s)) if len(gold) > 1 else None
        slices[key] = {"n": m["n"], "acc": m["acc"], "f1_macro": f1_macro, "ece": m["ece"]}
    return slices


LOWER_IS_BETTER = frozenset({"ece", "loss", "perplexity"})  # for every other metric higher is better


def gap_table(
    in_dist: Mapping, ood: Mapping, keys: Sequence[str] = ("acc", "f1_macro", "ece", "loss")
) -> dict[str, dict]:
    """``{key: {"in_distribution": x, "ood": y, "gap": x - y, "ood_worse_by": d, "worse": side}}`` per key.

    ``gap`` is the raw difference ID − OOD (its good sign depends on the metric);
    ``ood_worse_by`` has one sign for every metric: positive means OOD is worse
    (lower accuracy/F1/score, higher ECE/loss/perplexity), negative that it is better.
    ``worse`` names the worse side: "ood", "in_distribution" or "neither".
    A key missing (or None) on either side gives None for that side, the gap and the rest.
    """
    table = {}
    for key in keys:
        x, y = in_dist.get(key), ood.get(key)
        gap = float(x) - float(y) if isinstance(x, numbers.Real) and isinstance(y, numbers.Real) else None
        worse_by = None if gap is None else (-gap if key in LOWER_IS_BETTER else gap)
        table[key] = {
            "in_distribution": None if x is None else float(x),
            "ood": None if y is None else float(y),
            "gap": gap,
            "ood_worse_by": worse_by,
            "worse": None
            if worse_by is None
            else "ood"
            if worse_by > 0
            else "in_distribution"
            if worse_by < 0
            else "neither",
        }
    return table
