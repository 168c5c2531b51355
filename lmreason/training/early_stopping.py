"""Early stopping with Lightning's knobs: monitor, mode, patience, min_delta.

Which validation is "best" (the one `checkpoints/best` holds):
  - a monitored value better than the best by more than `min_delta` is a new best and resets patience;
  - a value *equal* to the best (a tie: e.g. val/acc 1.0 at steps 8, 16 and 24 of a small run) is broken
    by validation loss: a lower val/loss makes the later validation the best, so `best` is not the
    barely-trained first model to reach the value. Such a tie-break does not reset patience: patience
    counts validations without a better *monitored* value, so a plateau still stops the run;
  - when the monitor is val/loss itself, or no loss is known (a checkpoint saved before this rule),
    a tie keeps the earlier best.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

TIE_BREAK = "val/loss"  # the metric that breaks a tie on the monitor (lower wins)


def _finite(value) -> bool:
    return value is not None and not math.isnan(value)


class EarlyStopping:
    def __init__(self, cfg: DictConfig):
        self.enabled = cfg.enabled
        self.monitor, self.mode = cfg.monitor, cfg.mode
        self.patience, self.min_delta = cfg.patience, cfg.min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_loss: float | None = None  # val/loss at best_step: breaks ties on the monitor
        self.bad_evals = 0

    def improves(self, value: float) -> bool:
        if not _finite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def breaks_tie(self, value: float, loss: float | None) -> bool:
        """`value` equals the best and its validation loss is lower: the later model is the better one."""
        if self.monitor == TIE_BREAK or self.best is None or not _finite(value) or value != self.best:
            return False
        return _finite(loss) and _finite(self.best_loss) and loss < self.best_loss

    def update(self, value: float, step: int, loss: float | None = None) -> bool:
        """Record a validation result (`loss`: its val/loss, for ties); True when it is the new best."""
        if self.improves(value):
            self.best, self.best_step, self.bad_evals = float(value), step, 0
            self.best_loss = float(value) if self.monitor == TIE_BREAK else (float(loss) if _finite(loss) else None)
            return True
        self.bad_evals += 1  # a tie-break moves `best` but is no progress on the monitor: patience runs on
        if self.breaks_tie(value, loss):
            self.best_step, self.best_loss = step, float(loss)
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self.enabled and self.bad_evals >= self.patience

    def state_dict(self) -> dict:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "best_loss": self.best_loss,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.bad_evals = state["best"], state["best_step"], state["bad_evals"]
        self.best_loss = state.get("best_loss")  # absent in checkpoints written before the tie-break rule
