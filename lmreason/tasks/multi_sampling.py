"""task=multi's batch plan: single-task batches, shared among tasks by a sampling rule.

Deterministic in (seed, epoch), like `lmreason.training.batching.length_grouped_batches`, so a
resumed run replays the same plan and skips the batches it had done.

An epoch has as many batches as one pass over every task (sum of ceil(n_i / B)). Task i gets a
quota of them in proportion to p_i (largest-remainder rounding, at least one each):
  - proportional: p_i = n_i / sum_j n_j (each task's examples once per epoch, up to rounding);
  - temperature T: p_i = n_i^(1/T) / sum_j n_j^(1/T) (Arivazhagan et al. 2019; T5's temperature-scaled
    mixing, Raffel et al. 2020): T = 1 is proportional, larger T moves towards uniform, so a small task
    repeats its batches (reshuffled on each pass) and a large one sees a different share each epoch.
The quotas are then interleaved in a seeded random order.
"""

from __future__ import annotations

import numpy as np

from lmreason.training.batching import length_grouped_batches


def task_probabilities(sizes, sampling: str, temperature: float = 1.0) -> np.ndarray:
    """p_i for tasks of `sizes` training examples under `sampling` (proportional | temperature)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    power = 1.0 if str(sampling) == "proportional" else 1.0 / float(temperature)
    weights = sizes**power
    return weights / weights.sum()


def batch_quotas(probabilities: np.ndarray, total: int) -> np.ndarray:
    """Batches per task: `total` shared by largest remainders, every task at least one."""
    exact = probabilities * total
    quotas = np.maximum(np.floor(exact).astype(np.int64), 1)
    while quotas.sum() < total:  # hand out what rounding down left, largest remainder first
        quotas[np.argmax(exact - quotas)] += 1
    while quotas.sum() > total:  # the minimum of one pushed it over: take from the largest above one
        quotas[np.argmax(np.where(quotas > 1, quotas - exact, -np.inf))] -= 1
    return quotas


def multitask_batches(
    task_of_row, lengths, batch_size: int, seed: int, epoch: int, rule: tuple[str, float], group_by_length: bool = True
) -> list[np.ndarray]:
    """Index batches of one epoch over rows whose task ids are `task_of_row` (0..K-1); each batch one task's.

    `rule`: (sampling, temperature). Within a task, batches are length-grouped as in single-task training.
    """
    task_of_row, lengths = np.asarray(task_of_row), np.asarray(lengths)
    n_tasks = int(task_of_row.max()) + 1 if len(task_of_row) else 0
    rows = [np.flatnonzero(task_of_row == t) for t in range(n_tasks)]
    sizes = [len(r) for r in rows]
    total = sum(-(-n // batch_size) for n in sizes)
    quotas = batch_quotas(task_probabilities(sizes, *rule), total)
    plan = []
    for t, (own, quota) in enumerate(zip(rows, quotas)):
        batches, rounds = [], 0
        while len(batches) < quota:  # a task that repeats: another pass, reshuffled (its own seed per pass)
            # a seed of its own per (epoch, task, pass): no two draws of a run share one
            stream = [seed, epoch, t, rounds]
            order = length_grouped_batches(lengths[own], batch_size, _mix(stream), 0, group_by_length)
            batches += [own[b] for b in order]
            rounds += 1
        plan += [(t, b) for b in batches[:quota]]
    order = np.random.default_rng([seed, epoch, n_tasks]).permutation(len(plan))
    return [plan[i][1] for i in order]


def _mix(values: list[int]) -> int:
    """One int seed from several (length_grouped_batches takes (seed, epoch) ints)."""
    return int(np.random.SeedSequence(values).generate_state(1)[0])
