"""`lmreason evaluate compare='[<run>,<run>,...]'`: one page comparing runs on the same examples.

Each run must have been evaluated (`lmreason evaluate run=<dir>` leaves eval/<split>/ records); the
comparison reads those records, matches the examples of every run to the first (baseline) run's by
their text (cls) or prompt (gen), and gives each headline metric side by side with the *paired*
bootstrap interval of its difference against the baseline (both runs resampled on the same examples,
so the examples' own difficulty cancels), marked significant when that interval excludes 0. Runs on
different data or label sets are refused: a paired difference needs the same examples.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from lmreason.errors import UserError
from lmreason.evaluation import statistics as stats
from lmreason.evaluation.per_example import CI_KEYS, metric_cis, read_split_examples, statistics_of
from lmreason.evaluation.report_context import read_json, run_config

IGNORED_SETTINGS = ("output_dir", "cache_dir", "resume")  # differ between any two runs and say nothing


def load_run(run_dir: Path) -> dict:
    """{"dir", "config", "splits": {split: SplitExamples}, "metrics": {split: metrics.json}} of an evaluated run.

    Raises:
        UserError: no such dir, or a run that was never evaluated.
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise UserError(f"compare: {run_dir}: no such directory; give finetune run dirs")
    splits, metrics = {}, {}
    eval_dir = run_dir / "eval"
    for split_dir in sorted(p for p in eval_dir.iterdir() if p.is_dir()) if eval_dir.is_dir() else []:
        examples = read_split_examples(split_dir)
        if examples is not None and len(examples):
            splits[split_dir.name] = examples
            metrics[split_dir.name] = read_json(split_dir / "metrics.json") or {}
    if not splits:
        raise UserError(
            f"compare: {run_dir} has no evaluation (no eval/<split>/ records); "
            f"evaluate it first: lmreason evaluate run={run_dir}"
        )
    return {"dir": str(run_dir), "config": run_config(run_dir) or {}, "splits": splits, "metrics": metrics}


def align(baseline, other, split: str, names: tuple[str, str]):
    """`other` reordered to the baseline's examples (matched by text/prompt; repeated texts in order).

    Raises:
        UserError: the two runs did not evaluate the same examples, or their gold labels differ.
    """
    positions = defaultdict(list)
    for i, key in enumerate(other.keys):
        positions[key].append(i)
    order = []
    for key in baseline.keys:
        if not positions.get(key):
            break
        order.append(positions[key].pop(0))
    if len(order) != len(baseline) or len(other) != len(baseline):
        shared = len(set(baseline.keys) & set(other.keys))
        raise UserError(
            f"compare: {names[1]} and {names[0]} evaluated different {split} examples "
            f"({len(other)} vs {len(baseline)}, {shared} texts in common): they were run on different data; "
            "compare only runs evaluated on the same data"
        )
    aligned = other.subset(order)
    if aligned.gold != baseline.gold:
        raise UserError(
            f"compare: {names[1]} and {names[0]} give the same {split} texts different gold labels/answers: "
            "different label sets; compare only runs trained and evaluated on the same data"
        )
    return aligned


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def differing_settings(configs: list[dict]) -> dict[str, list[str]]:
    """{dotted key: [value per run]} for the settings that are not the same in every run."""
    flats = [flatten(c) for c in configs]
    keys = sorted({k for f in flats for k in f if k.split(".")[0] not in IGNORED_SETTINGS})
    return {k: [f.get(k, "—") for f in flats] for k in keys if len({f.get(k, "—") for f in flats}) > 1}


def _check_labels(runs: list[dict], names: list[str]) -> None:
    sets = [next((m.get("label_names") for m in r["metrics"].values() if m.get("label_names")), None) for r in runs]
    for name, labels in zip(names[1:], sets[1:]):
        if labels is not None and sets[0] is not None and sorted(labels) != sorted(sets[0]):
            raise UserError(
                f"compare: {name} has labels {labels} but {names[0]} has {sets[0]}: different label sets; "
                "compare only runs trained on the same data"
            )


def compare_runs(run_dirs: list, seed: int = stats.SEED) -> dict:
    """The comparison: differing settings, and per shared split and metric each run's value (with its interval)
    and its paired difference from the baseline (the first run).

    Raises:
        UserError: fewer than two runs, a run not evaluated, runs on different data/tasks/label sets.
    """
    if len(run_dirs) < 2:
        raise UserError("compare: give two or more run dirs, e.g. compare='[<baseline run>,<other run>]'")
    runs = [load_run(d) for d in run_dirs]
    names = [r["dir"] for r in runs]
    tasks = {next(iter(r["splits"].values())).task for r in runs}
    if len(tasks) > 1:
        raise UserError("compare: the runs are of different tasks (cls and gen); compare runs of one task")
    task = tasks.pop()
    _check_labels(runs, names)
    shared = [s for s in runs[0]["splits"] if all(s in r["splits"] for r in runs[1:])]
    if not shared:
        raise UserError(
            "compare: the runs share no evaluated split; evaluate each on the same split "
            "(lmreason evaluate run=<dir> split=test)"
        )
    shared.sort(key=lambda s: (s == "ood", s))
    aligned = {
        s: [runs[0]["splits"][s]]
        + [align(runs[0]["splits"][s], r["splits"][s], s, (names[0], r["dir"])) for r in runs[1:]]
        for s in shared
    }
    rows = [_metric_row(split, key, aligned[split], seed) for split in shared for key in CI_KEYS[task]]
    ood_pair = next((s for s in shared if s != "ood"), None) if "ood" in shared else None
    if ood_pair:
        # the gap of the headline metrics (an ECE "gap" has no better direction)
        rows += [
            _gap_row(key, aligned[ood_pair], aligned["ood"], ood_pair, seed) for key in CI_KEYS[task] if key != "ece"
        ]
    return {
        "task": task,
        "runs": names,
        "baseline": names[0],
        "splits": shared,
        "examples": {s: len(aligned[s][0]) for s in shared},
        "settings": differing_settings([r["config"] for r in runs]),
        "rows": rows,
    }


def _metric_row(split: str, key: str, examples: list, seed: int) -> dict:
    stat = [statistics_of(e)[key] for e in examples]
    n = len(examples[0])
    values = [float(s(stats_all(n))[0]) for s in stat]
    cis = [metric_cis(e, seed)[f"{key}_ci"] for e in examples]
    diffs = [None] + [stats.paired_difference_ci(stat[0], s, n, seed=seed) for s in stat[1:]]
    return _row(f"{split}/{key}", key == "ece", values, cis, diffs)


def _gap_row(key: str, in_dist: list, ood: list, id_name: str, seed: int) -> dict:
    """The ID − OOD gap of each run, and the difference of gaps against the baseline (paired within a split)."""
    n_id, n_ood = len(in_dist[0]), len(ood[0])
    stat_id = [statistics_of(e)[key] for e in in_dist]
    stat_ood = [statistics_of(e)[key] for e in ood]
    values = [float(a(stats_all(n_id))[0] - b(stats_all(n_ood))[0]) for a, b in zip(stat_id, stat_ood)]
    cis = [stats.gap_ci((a, n_id), (b, n_ood), seed=seed) for a, b in zip(stat_id, stat_ood)]
    diffs = [None] + [
        stats.paired_gap_difference_ci((stat_id[0], stat_ood[0]), (a, b), (n_id, n_ood), seed=seed)
        for a, b in zip(stat_id[1:], stat_ood[1:])
    ]
    return _row(f"gap {id_name}-ood/{key}", True, values, cis, diffs)  # a smaller ID − OOD gap is better


def _row(name: str, lower_better: bool, values: list, cis: list, diffs: list) -> dict:
    """One metric across runs: value and interval, difference from the baseline with its paired interval."""
    cells = []
    for value, ci, diff in zip(values, cis, diffs):
        cell = {"value": value, "ci": ci, "diff": None, "diff_ci": diff, "significant": stats.excludes_zero(diff)}
        if diff is not None:
            cell["diff"] = value - values[0]
            better = cell["diff"] < 0 if lower_better else cell["diff"] > 0
            cell["reading"] = ("better" if better else "worse") if cell["significant"] else "within noise"
        cells.append(cell)
    return {"metric": name, "lower_is_better": lower_better, "cells": cells}


def stats_all(n: int):
    """The identity resample (every example once): a statistic on it is the metric itself."""
    import numpy as np

    return np.arange(n)[None, :]


def write_comparison(comparison: dict, out_dir: Path) -> Path:
    """compare.json and compare.html in `out_dir`; returns the page's path.

    Raises:
        UserError: the files cannot be written.
    """
    from lmreason.evaluation.outputs import write_json, write_text
    from lmreason.evaluation.report_page import render

    out_dir = Path(out_dir)
    write_json(out_dir / "compare.json", comparison)
    page = out_dir / "compare.html"
    write_text(
        page, render("compare.html.j2", title=f"lmreason comparison of {len(comparison['runs'])} runs", c=comparison)
    )
    return page


def comparison_table(comparison: dict):
    """The comparison on the terminal: one row per metric, a column per run (its difference from the baseline)."""
    from rich.table import Table

    table = Table(title=f"runs against the baseline {comparison['baseline']}", title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("baseline", justify="right")
    for i in range(1, len(comparison["runs"])):
        table.add_column(f"run {i}: value, difference [95% CI]", justify="right")
    for row in comparison["rows"]:
        cells = [f"{row['cells'][0]['value']:.4f}"]
        for cell in row["cells"][1:]:
            lo, hi = cell["diff_ci"]
            colour = {"better": "green", "worse": "red"}.get(cell["reading"], "dim")
            cells.append(
                f"{cell['value']:.4f} [{colour}]{cell['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}] {cell['reading']}[/]"
            )
        table.add_row(row["metric"], *cells)
    return table


def compare_command(run_dirs: list, out_dir: Path) -> dict:
    """Compare, write the page, print the table and the page's path."""
    from lmreason.ui import console

    comparison = compare_runs([str(d) for d in run_dirs])
    page = write_comparison(comparison, out_dir)
    console.print(comparison_table(comparison))
    console.print(f"comparison: [link=file://{page.resolve()}]file://{page.resolve()}[/link]")
    return comparison
