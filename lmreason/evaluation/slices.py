"""Which metadata columns to slice a split by, and generation metrics per slice.

(Classification metrics per slice are `metrics.slice_metrics`.)
"""

from __future__ import annotations

import numpy as np

from lmreason.errors import UserError

MAX_SLICE_VALUES = 50  # a metadata column with more distinct values is an id, not a slice
# Bookkeeping columns of reasoning rows: never slices.
NOT_SLICES = {"answer", "entry", "generator_config", "source_seed", "source_index", "prompt_length"}


def slice_columns(asked, metadata_columns: list[str], dataset) -> list[str]:
    """The columns to slice `dataset` by: `asked` (slice_columns=...) when given, else every metadata
    column with 2..MAX_SLICE_VALUES distinct values in this split (one value says nothing; one value
    per row is an id), bookkeeping columns excluded.

    Raises:
        UserError: an asked column the data does not have.
    """
    if asked is not None:
        missing = [c for c in asked if c not in dataset.column_names]
        if missing:
            raise UserError(
                f"slice_columns: no column {', '.join(missing)} in this data; "
                f"metadata columns are: {', '.join(metadata_columns) or 'none'}"
            )
        return list(asked)
    limit = min(MAX_SLICE_VALUES, len(dataset) - 1)
    chosen, seen = [], set()
    # `difficulty` first: where a task's difficulty *is* one of its metadata fields (chain_sum: the number
    # of terms), the two columns slice identically and the table is shown once, under that name.
    for column in sorted(metadata_columns, key=lambda c: c != "difficulty"):
        if column not in dataset.column_names or column in NOT_SLICES:
            continue
        values = tuple(map(str, dataset[column]))
        grouping = _partition(values)
        if 2 <= len(set(values)) <= limit and grouping not in seen:
            seen.add(grouping)
            chosen.append(column)
    return chosen


def _partition(values: tuple) -> tuple:
    """The grouping of rows a column induces, whatever its values are called."""
    first: dict = {}
    return tuple(first.setdefault(v, len(first)) for v in values)


def generation_slices(correct: np.ndarray, scores: np.ndarray, values) -> dict[str, dict]:
    """{value: {n, exact_match, score}} per distinct value of a metadata column (numbers in numeric order)."""
    from lmreason.evaluation.metrics import slice_sort_key

    groups: dict[str, list[int]] = {}
    for i, value in enumerate(values):
        groups.setdefault(str(value), []).append(i)
    return {
        key: {"n": len(rows), "exact_match": float(correct[rows].mean()), "score": float(scores[rows].mean())}
        for key, rows in sorted(groups.items(), key=lambda kv: slice_sort_key(kv[0]))
    }
