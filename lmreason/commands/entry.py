"""What every command's `main` shares: its Hydra app and the one-line error contract."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.experimental.callback import Callback
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


class RunDirGuard(Callback):
    """A Hydra callback (conf/paths.yaml) that checks the run dir before Hydra writes `.hydra/` and its log there.

    Refuses, as one line and exit status 1: a run dir that cannot be written (Hydra would show a
    traceback), and a new finetune pointed at the dir of an existing run (Hydra would overwrite that
    run's .hydra/config.yaml before the trainer could refuse it).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if int(os.environ.get("RANK", "0")) > 0:  # torchrun workers write into rank 0's run dir
            return
        run_dir = Path(str(config.hydra.run.dir)).expanduser()  # `now` is cached: the dir Hydra will use
        command = config.hydra.job.name
        if "resume" in config and not config.resume and (run_dir / "checkpoints").exists():
            _refuse(command, f"{run_dir} already holds a run; start a new one or resume it with resume={run_dir}")
        _check_writable(command, run_dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_writable(config.hydra.job.name, Path(str(config.hydra.sweep.dir)).expanduser(), "hydra.sweep.dir")


def _check_writable(command: str, directory: Path, key: str) -> None:
    probe = directory / f".lmreason-write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as exc:
        _refuse(command, f"cannot write the output dir {directory} ({exc.strerror or exc}); choose a writable one with {key}=<dir>")


def _refuse(command: str, message: str) -> None:
    print(f"lmreason {command}: error: {message}", file=sys.stderr)
    sys.exit(1)


def in_multirun() -> bool:
    """True inside a job of `-m` (a sweep), False in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def hydra_command(config_name: str, objective: Callable[[Any], Any] | None = None):
    """Wrap a pure `run(cfg)` into a Hydra `main`.

    A UserError becomes one line on stderr and exit status 1 (no traceback);
    any other exception is a bug and keeps its traceback. `objective` maps the
    results of `run` to the value returned to Hydra sweepers (e.g. Optuna).
    In a multirun a UserError (a diverged or misconfigured job) ends only its
    job: the line is printed, the job returns None (Optuna records the trial as
    failed) and the sweep goes on; `sys.exit` there would end every job.
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
                if in_multirun() and not exc.stops_sweep:
                    return None
                sys.exit(exc.exit_code)
            except KeyboardInterrupt:
                print(f"lmreason {config_name}: interrupted", file=sys.stderr)
                sys.exit(130)
            return objective(results) if objective else None

        return main

    return decorate
