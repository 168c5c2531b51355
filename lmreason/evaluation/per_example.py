"""Per-example outcomes of an evaluated split, and the confidence intervals computed from them.

An evaluated split leaves its examples in eval/<split>/predictions.jsonl (task=cls: text, label,
predicted, confidence) or generations.jsonl (task=gen: prompt, reference, generated, score,
correct). `SplitExamples` is what the statistics need of them: correctness, confidence or score,
and a key per example (its text or prompt) that matches the same example across runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lmreason.errors import UserError
from lmreason.evaluation import statistics as stats

RECORD_FILES = {"cls": "predictions.jsonl", "gen": "generations.jsonl"}
CI_KEYS = {"cls": ("acc", "ece"), "gen": ("exact_match", "score")}  # metrics with a bootstrap interval


@dataclass
class SplitExamples:
    task: str  # "cls" or "gen"
    keys: list[str]  # the example's text (cls) or prompt (gen)
    gold: list[str]  # gold label (cls) or reference answer (gen)
    correct: np.ndarray  # (N,) bool
    confidence: np.ndarray | None = None  # (N,) max class probability (cls)
    score: np.ndarray | None = None  # (N,) scorer's score in [0, 1] (gen)
    columns: dict[str, list] = field(default_factory=dict)  # slice column -> value per example

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, rows) -> SplitExamples:
        rows = np.asarray(rows, dtype=np.int64)

        def pick(values):
            return None if values is None else values[rows]

        return SplitExamples(
            self.task,
            [self.keys[i] for i in rows],
            [self.gold[i] for i in rows],
            pick(self.correct),
            pick(self.confidence),
            pick(self.score),
            {c: [v[i] for i in rows] for c, v in self.columns.items()},
        )


def classification_examples(texts, gold, correct, confidence, columns=None) -> SplitExamples:
    return SplitExamples(
        "cls",
        list(texts),
        [str(g) for g in gold],
        np.asarray(correct, dtype=bool),
        confidence=np.asarray(confidence, dtype=np.float64),
        columns=dict(columns or {}),
    )


def generation_examples(prompts, references, correct, scores, columns=None) -> SplitExamples:
    return SplitExamples(
        "gen",
        list(prompts),
        [str(r) for r in references],
        np.asarray(correct, dtype=bool),
        score=np.asarray(scores, dtype=np.float64),
        columns=dict(columns or {}),
    )


def read_split_examples(split_dir: Path, slice_columns: list[str] = ()) -> SplitExamples | None:
    """The examples of eval/<split>/ (None when the split was not evaluated).

    Raises:
        UserError: a records file that is not JSON lines.
    """
    split_dir = Path(split_dir)
    found = [(task, split_dir / name) for task, name in RECORD_FILES.items() if (split_dir / name).is_file()]
    if not found:
        return None
    task, path = found[0]
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({type(exc).__name__}); evaluate the run again to rewrite it") from None
    columns = {c: [row.get(c) for row in rows] for c in slice_columns}
    if task == "cls":
        return classification_examples(
            [r["text"] for r in rows],
            [r["label"] for r in rows],
            [r["label"] == r["predicted"] for r in rows],
            [r["confidence"] for r in rows],
            columns,
        )
    return generation_examples(
        [r["prompt"] for r in rows],
        [r["reference"] for r in rows],
        [bool(r["correct"]) for r in rows],
        [r["score"] for r in rows],
        columns,
    )


def statistics_of(examples: SplitExamples) -> dict[str, stats.Statistic]:
    """{metric: statistic over resample indices} for the metrics with an interval."""
    if examples.task == "cls":
        return {"acc": stats.mean_of(examples.correct), "ece": stats.ece_of(examples.confidence, examples.correct)}
    return {"exact_match": stats.mean_of(examples.correct), "score": stats.mean_of(examples.score)}


def metric_cis(examples: SplitExamples, seed: int = stats.SEED) -> dict[str, list[float] | None]:
    """{"acc_ci": [lo, hi], "ece_ci": ...} (or exact_match_ci, score_ci); None for an empty split."""
    if not len(examples):
        return {f"{key}_ci": None for key in CI_KEYS[examples.task]}
    return {
        f"{key}_ci": stats.metric_ci(statistic, len(examples), seed=seed)
        for key, statistic in statistics_of(examples).items()
    }


def gap_cis(in_dist: SplitExamples, ood: SplitExamples, seed: int = stats.SEED) -> dict[str, list[float]]:
    """{metric: interval of ID − OOD} with both splits resampled independently."""
    if not len(in_dist) or not len(ood):
        return {}
    first, second = statistics_of(in_dist), statistics_of(ood)
    return {
        key: stats.gap_ci((first[key], len(in_dist)), (second[key], len(ood)), seed=seed)
        for key in first
        if key in second
    }


def slice_rows(values: list) -> dict[str, list[int]]:
    """Rows per distinct slice value (keyed by str(value), as the slice tables are)."""
    groups: dict[str, list[int]] = {}
    for i, value in enumerate(values):
        groups.setdefault(str(value), []).append(i)
    return groups


def add_slice_cis(slices: dict[str, dict], examples: SplitExamples, column: str) -> None:
    """Each slice row of `column` gets its metrics' intervals (acc_ci, ... over that slice's examples)."""
    for value, rows in slice_rows(examples.columns[column]).items():
        if value in slices:
            slices[value].update(metric_cis(examples.subset(rows)))


def add_gap_cis(gap: dict[str, dict], in_dist: SplitExamples, ood: SplitExamples) -> None:
    """Rows of `metrics.gap_table` get `gap_ci` (of ID − OOD, splits resampled independently), `ood_worse_by_ci`
    (the same interval in the "positive = OOD worse" sign) and each side's own interval."""
    from lmreason.evaluation.metrics import LOWER_IS_BETTER

    sides = metric_cis(in_dist), metric_cis(ood)
    for key, ci in gap_cis(in_dist, ood).items():
        if key not in gap:
            continue
        gap[key]["gap_ci"] = ci
        gap[key]["ood_worse_by_ci"] = [-ci[1], -ci[0]] if key in LOWER_IS_BETTER else ci
        gap[key]["in_distribution_ci"] = sides[0].get(f"{key}_ci")
        gap[key]["ood_ci"] = sides[1].get(f"{key}_ci")
