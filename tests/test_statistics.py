"""lmreason/evaluation/statistics.py: each interval means what its name says (checked on simulated data)."""

from __future__ import annotations

import numpy as np
import pytest

from lmreason.evaluation import statistics as stats
from lmreason.evaluation.metrics import expected_calibration_error


def test_all_correct_gives_the_interval_one_one():
    assert stats.mean_ci(np.ones(50)) == [1.0, 1.0]
    assert stats.mean_ci(np.zeros(7)) == [0.0, 0.0]


def test_the_interval_holds_the_estimate_and_narrows_with_more_examples():
    rng = np.random.default_rng(3)
    small, large = rng.random(100) < 0.7, rng.random(10_000) < 0.7
    lo, hi = stats.mean_ci(small)
    assert lo <= small.mean() <= hi
    lo_l, hi_l = stats.mean_ci(large)
    assert (hi_l - lo_l) < (hi - lo) / 5  # width ~ 1/sqrt(n): 100x the examples, ~10x narrower


def test_same_seed_same_interval_other_seed_other_draw():
    correct = np.random.default_rng(0).random(300) < 0.6
    assert stats.mean_ci(correct, seed=1) == stats.mean_ci(correct, seed=1)
    assert stats.mean_ci(correct, seed=1) != stats.mean_ci(correct, seed=2)


def test_coverage_is_close_to_95_percent_on_simulated_accuracy():
    """400 simulated test sets of 200 examples at a true accuracy of 0.7: the 95% interval holds 0.7 in ~95% of
    them (binomial sd of the coverage over 400 trials ~1.1 points; the percentile bootstrap runs a little low)."""
    rng = np.random.default_rng(7)
    trials, held = 400, 0
    for t in range(trials):
        lo, hi = stats.mean_ci(rng.random(200) < 0.7, n_resamples=500, seed=t)
        held += lo <= 0.7 <= hi
    assert 0.91 <= held / trials <= 0.98, held / trials


def test_gap_interval_contains_the_true_gap_in_simulation():
    """ID accuracy 0.8 on 300 examples, OOD 0.6 on 200: the independent-resampling gap interval holds the true
    0.2 in ~95% of 300 simulated pairs, and excludes 0 (the gap is real) in nearly all."""
    rng = np.random.default_rng(11)
    trials, held, real = 300, 0, 0
    for t in range(trials):
        a, b = rng.random(300) < 0.8, rng.random(200) < 0.6
        ci = stats.gap_ci((stats.mean_of(a), 300), (stats.mean_of(b), 200), n_resamples=500, seed=t)
        held += ci[0] <= 0.2 <= ci[1]
        real += stats.excludes_zero(ci)
    assert 0.91 <= held / trials <= 0.98, held / trials
    assert real / trials > 0.95


def test_paired_difference_of_a_run_with_itself_is_zero():
    correct = np.random.default_rng(1).random(500) < 0.5
    statistic = stats.mean_of(correct)
    assert stats.paired_difference_ci(statistic, statistic, 500) == [0.0, 0.0]
    assert not stats.excludes_zero([0.0, 0.0])


def test_paired_difference_is_narrower_than_unpaired_and_finds_a_small_real_gain():
    """Run B fixes 3% of A's errors on the same 1,000 examples, nothing else changes: the paired interval sees
    it (excludes 0); treating the two as independent samples would call it noise."""
    rng = np.random.default_rng(5)
    a = rng.random(1000) < 0.7
    b = a.copy()
    b[np.flatnonzero(~a)[:30]] = True
    paired = stats.paired_difference_ci(stats.mean_of(a), stats.mean_of(b), 1000)
    unpaired = stats.gap_ci((stats.mean_of(b), 1000), (stats.mean_of(a), 1000))
    assert paired[0] > 0 and stats.excludes_zero(paired)
    assert unpaired[0] < 0 < unpaired[1]
    assert paired[1] - paired[0] < (unpaired[1] - unpaired[0]) / 2


def test_ece_statistic_is_the_metric_on_the_identity_resample():
    rng = np.random.default_rng(2)
    confidence = rng.uniform(0.5, 1.0, 400)
    correct = rng.random(400) < confidence - 0.1  # overconfident by ~0.1
    value = stats.ece_of(confidence, correct)(np.arange(400)[None, :])[0]
    assert value == pytest.approx(expected_calibration_error(confidence, correct))
    lo, hi = stats.metric_ci(stats.ece_of(confidence, correct), 400)
    assert lo < value < hi and lo > 0.0


def test_resampling_is_chunked_and_covers_every_resample():
    rng = np.random.default_rng(0)
    shapes = [chunk.shape for chunk in stats.resample_indices(3_000_000, 5, rng)]
    assert sum(s[0] for s in shapes) == 5 and len(shapes) > 1  # 4M cells per chunk at most


def test_no_examples_is_an_error_not_a_nan():
    with pytest.raises(ValueError, match="zero examples"):
        stats.mean_ci([])
