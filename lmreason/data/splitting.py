"""Seeded, stratified splits for sources without their own, and seeded subsamples."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lmreason.errors import UserError


def stratified_split(
    frame: pd.DataFrame, ratios: dict[str, float], seed: int, stratify: str | None
) -> dict[str, pd.DataFrame]:
    """Split `frame` by `ratios` (normalised), keeping each label's share in every split.

    Raises:
        UserError: bad ratios, or a split that would come out empty.
    """
    if not ratios or any(r < 0 for r in ratios.values()) or sum(ratios.values()) <= 0:
        raise UserError(f"data.split_ratios={dict(ratios)}: ratios must be non-negative and sum to more than 0")
    names = [n for n, r in ratios.items() if r > 0]
    shares = np.array([ratios[n] for n in names], dtype=float)
    shares /= shares.sum()
    rng = np.random.default_rng(seed)
    groups = frame.groupby(stratify, sort=True).indices.values() if stratify else [np.arange(len(frame))]
    assigned: dict[str, list[int]] = {n: [] for n in names}
    for indices in groups:
        indices = rng.permutation(np.asarray(indices))
        # Largest-remainder rounding so the group's rows are all used.
        exact = shares * len(indices)
        counts = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - counts))[: len(indices) - counts.sum()]:
            counts[i] += 1
        start = 0
        for name, count in zip(names, counts):
            assigned[name].extend(indices[start : start + count].tolist())
            start += count
    out = {}
    for name in names:
        if not assigned[name]:
            raise UserError(
                f"split '{name}' is empty after splitting {len(frame)} rows with data.split_ratios={dict(ratios)}; "
                "give more data or raise that ratio"
            )
        out[name] = frame.iloc[sorted(assigned[name])].reset_index(drop=True)
    return out


def subsample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """A seeded random subset of `n` rows (all rows when there are fewer), in original order."""
    if n >= len(frame):
        return frame
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(frame), size=n, replace=False))
    return frame.iloc[keep].reset_index(drop=True)
