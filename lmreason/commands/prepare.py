"""`lmreason prepare`: load, validate, split, tokenize and cache a dataset."""

from __future__ import annotations

from omegaconf import DictConfig

from lmreason.commands.entry import hydra_command
from lmreason.validation import validate


def run(cfg: DictConfig) -> dict:
    """Prepare the data of `cfg` (or reuse its cache) and print a summary. Returns the summary."""
    from lmreason.data.prepare import prepare_data
    from lmreason.tasks import get_task
    from lmreason.ui import console, render_prepare_summary

    validate("prepare", cfg)
    prepared = prepare_data(cfg, get_task(cfg.task))
    render_prepare_summary(prepared, console)
    return prepared.summary


main = hydra_command("prepare")(run)
