"""Early stopping with Lightning's knobs: monitor, mode, patience, min_delta."""

from __future__ import annotations

import math

from omegaconf import DictConfig


class EarlyStopping:
    def __init__(self, cfg: DictConfig):
        self.enabled = cfg.enabled
        self.monitor, self.mode = cfg.monitor, cfg.mode
        self.patience, self.min_delta = cfg.patience, cfg.min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0

    def improves(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float, step: int) -> bool:
        """Record a validation result; True when it is the new best."""
        if self.improves(value):
            self.best, self.best_step, self.bad_evals = float(value), step, 0
            return True
        self.bad_evals += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.bad_evals = state["best"], state["best_step"], state["bad_evals"]
