"""scripts/bench_compile.py: the overhead and break-even it reports follow from the runs' figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench_compile():
    spec = importlib.util.spec_from_file_location("bench_compile", ROOT / "scripts" / "bench_compile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(wall_s, steady):
    return {"wall_s": wall_s, "train_samples_per_s": steady, "steady_samples_per_s": steady, "val_acc": 0.8}


def test_break_even_is_where_the_per_row_saving_repays_the_compilation(bench_compile):
    """1,000 rows: eager 100 rows/s + 10 s fixed = 20 s; compiled 125 rows/s + 10 s fixed + 60 s compiling = 78 s.
    Compiling saves 1/100 - 1/125 = 0.002 s per row, so it pays from 60 / 0.002 = 30,000 rows."""
    table = bench_compile.summary({"eager": [run(20.0, 100.0)], "compile": [run(78.0, 125.0)]}, rows=1000)
    assert table["compile_overhead_s"] == pytest.approx(60.0)
    assert table["steady_speedup"] == pytest.approx(1.25)
    assert table["break_even_rows"] == pytest.approx(30_000)
    assert table["wall_ratio_eager_over_compile"] == pytest.approx(20 / 78)


def test_no_break_even_when_compiled_steps_are_not_faster(bench_compile):
    table = bench_compile.summary({"eager": [run(20.0, 100.0)], "compile": [run(90.0, 95.0)]}, rows=1000)
    assert table["break_even_rows"] is None and table["steady_speedup"] < 1


def test_medians_over_reps_and_missing_figures_skipped(bench_compile):
    eager = [run(20.0, 100.0), run(22.0, 90.0), run(40.0, 110.0)]
    compiled = [run(78.0, 125.0), {**run(80.0, 125.0), "train_samples_per_s": None}]
    table = bench_compile.summary({"eager": eager, "compile": compiled}, rows=1000)
    assert table["modes"]["eager"]["wall_s"] == 22.0 and table["modes"]["eager"]["steady_samples_per_s"] == 100.0
    assert table["modes"]["compile"]["train_samples_per_s"] == 125.0  # the one figure there is
