"""What every command's `main` shares: its Hydra app and the one-line error contract."""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Callable

import hydra
from omegaconf import DictConfig

from lmreason.config import config_dir
from lmreason.errors import UserError


def quiet_libraries() -> None:
    """Library progress bars (weights writing, Arrow saving) would interleave with ours."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no fork warnings; we batch ourselves
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def hydra_command(config_name: str, objective: Callable[[Any], Any] | None = None):
    """Wrap a pure `run(cfg)` into a Hydra `main`.

    A UserError becomes one line on stderr and exit status 1 (no traceback);
    any other exception is a bug and keeps its traceback. `objective` maps the
    results of `run` to the value returned to Hydra sweepers (e.g. Optuna).
    """

    def decorate(run: Callable[[DictConfig], Any]):
        @hydra.main(version_base=None, config_path=config_dir(), config_name=config_name)
        @functools.wraps(run)
        def main(cfg: DictConfig):
            quiet_libraries()
            try:
                results = run(cfg)
            except UserError as exc:
                print(f"lmreason {config_name}: error: {exc}", file=sys.stderr)
                sys.exit(exc.exit_code)
            except KeyboardInterrupt:
                print(f"lmreason {config_name}: interrupted", file=sys.stderr)
                sys.exit(130)
            return objective(results) if objective else None

        return main

    return decorate
