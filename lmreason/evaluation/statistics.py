"""Bootstrap confidence intervals: of a metric, of the gap between two splits, of a paired difference.

Everything here is seeded numpy, vectorised over resamples: a resample is a row of an index matrix
(R, N) drawn with replacement, and a statistic maps that matrix to R values at once (the mean of
per-example correctness for accuracy / exact match / score; expected calibration error through one
`bincount` over all resamples). Intervals are percentile intervals (2.5th and 97.5th percentile of
the resampled statistic for 95%). 1,000 resamples of 5,000 examples take ~0.04 s (accuracy) and
~0.12 s (ECE) on one CPU core.

What an interval means: the spread of the metric over *the examples evaluated* (another draw of
test examples from the same source); it says nothing about another training seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

N_RESAMPLES = 1000  # resamples per interval
CONFIDENCE = 0.95  # two-sided coverage of every interval
SEED = 0  # the default seed: the same data gives the same interval
_CHUNK_CELLS = 4_000_000  # index-matrix cells drawn at once (32 MB of int64): memory stays bounded for large N

Statistic = Callable[[np.ndarray], np.ndarray]  # (R, N) resample indices -> (R,) statistic values


def mean_of(values) -> Statistic:
    """The statistic "mean of `values`" (per-example correctness 0/1, or scores) over each resample."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return lambda index: values[index].mean(axis=1)


def ece_of(confidence, correct, n_bins: int = 15) -> Statistic:
    """Expected calibration error (equal-width bins, as `metrics.expected_calibration_error`) of each resample."""
    from lmreason.evaluation.metrics import _bin_index

    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    bins = _bin_index(confidence, n_bins)

    def statistic(index: np.ndarray) -> np.ndarray:
        rows, n = index.shape
        cell = (np.arange(rows)[:, None] * n_bins + bins[index]).reshape(-1)  # (R*N,) resample-and-bin id
        size = rows * n_bins
        hits = np.bincount(cell, weights=correct[index].reshape(-1), minlength=size).reshape(rows, n_bins)
        conf = np.bincount(cell, weights=confidence[index].reshape(-1), minlength=size).reshape(rows, n_bins)
        return np.abs(hits - conf).sum(axis=1) / n  # sum_k count_k/N * |acc_k - conf_k|

    return statistic


def resample_indices(n: int, n_resamples: int, rng: np.random.Generator):
    """(rows, n) index matrices with replacement, `n_resamples` rows in all, in chunks of bounded size."""
    per_chunk = max(1, _CHUNK_CELLS // max(n, 1))
    for start in range(0, n_resamples, per_chunk):
        yield rng.integers(0, n, size=(min(per_chunk, n_resamples - start), n))


def _resampled(statistic: Statistic, n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate([statistic(index) for index in resample_indices(n, n_resamples, rng)])


def interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    """[lo, hi]: the percentile interval of resampled values."""
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def _check(n: int, what: str) -> None:
    if n < 1:
        raise ValueError(f"cannot bootstrap {what} of zero examples")


def metric_ci(
    statistic: Statistic, n: int, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED
) -> list[float]:
    """95% (by default) bootstrap interval of a statistic of `n` examples, e.g. `metric_ci(mean_of(correct), n)`.

    Raises:
        ValueError: n < 1.
    """
    _check(n, "a metric")
    return interval(_resampled(statistic, n, n_resamples, np.random.default_rng(seed)), confidence)


def mean_ci(values, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED) -> list[float]:
    """Interval of the mean of `values` (accuracy from 0/1 correctness; all correct gives [1, 1])."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    return metric_ci(mean_of(values), len(values), n_resamples, confidence, seed)


def gap_ci(
    first: tuple[Statistic, int],
    second: tuple[Statistic, int],
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> list[float]:
    """Interval of statistic(first split) − statistic(second split), each split resampled independently
    (two different sets of examples: in-distribution and OOD). Each side is (statistic, number of examples).

    Raises:
        ValueError: a side with no examples.
    """
    (stat_a, n_a), (stat_b, n_b) = first, second
    _check(n_a, "a gap")
    _check(n_b, "a gap")
    rng = np.random.default_rng(seed)
    return interval(_resampled(stat_a, n_a, n_resamples, rng) - _resampled(stat_b, n_b, n_resamples, rng), confidence)


def paired_difference_ci(
    baseline: Statistic,
    other: Statistic,
    n: int,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> list[float]:
    """Interval of other − baseline on the *same* `n` examples: both statistics see the same resample, so the
    examples' own difficulty cancels (a run compared with itself gives [0, 0]).

    Raises:
        ValueError: n < 1.
    """
    _check(n, "a paired difference")
    rng = np.random.default_rng(seed)
    parts = [other(index) - baseline(index) for index in resample_indices(n, n_resamples, rng)]
    return interval(np.concatenate(parts), confidence)


def paired_gap_difference_ci(
    baseline: tuple[Statistic, Statistic],
    other: tuple[Statistic, Statistic],
    sizes: tuple[int, int],
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> list[float]:
    """Interval of (other's ID − OOD gap) − (baseline's gap): each split resampled once for both runs
    (paired within a split, the two splits independent). Sides are (ID statistic, OOD statistic)."""
    n_id, n_ood = sizes
    _check(n_id, "a gap difference")
    _check(n_ood, "a gap difference")
    rng = np.random.default_rng(seed)
    id_part = np.concatenate([other[0](i) - baseline[0](i) for i in resample_indices(n_id, n_resamples, rng)])
    ood_part = np.concatenate([other[1](i) - baseline[1](i) for i in resample_indices(n_ood, n_resamples, rng)])
    return interval(id_part - ood_part)


def excludes_zero(ci) -> bool:
    """True when an interval of a difference lies wholly on one side of 0: the difference is significant."""
    return ci is not None and (ci[0] > 0 or ci[1] < 0)
