"""What every command's `main` shares: its Hydra app and the one-line error contract."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

import hydra
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

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
        command = config.hydra.job.name
        missing = missing_value_message(command, config, config.hydra.runtime.choices)
        if missing:  # before Hydra makes the run dir: a forgotten data.path leaves nothing behind
            _refuse(command, missing, exit_code=2)
        if int(os.environ.get("RANK", "0")) > 0:  # torchrun workers write into rank 0's run dir
            return
        run_dir = Path(str(config.hydra.run.dir)).expanduser()  # `now` is cached: the dir Hydra will use
        if "resume" in config and not config.resume and (run_dir / "checkpoints").exists():
            _refuse(command, f"{run_dir} already holds a run; start a new one or resume it with resume={run_dir}")
        if str(config.hydra.run.dir) == "." and config.hydra.output_subdir is None:
            return  # a command that keeps no run dir (infer): nothing will be written there
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
        _refuse(
            command,
            f"cannot write the output dir {directory} ({exc.strerror or exc}); choose a writable one with {key}=<dir>",
        )


def _refuse(command: str, message: str, exit_code: int = 1) -> None:
    print(f"lmreason {command}: error: {message}", file=sys.stderr)
    sys.exit(exit_code)


def missing_value_message(command: str, cfg: DictConfig, choices: Any = None) -> str | None:
    """`data.path is required (...)`, for the first mandatory (`???`) value the user has not given, or None."""
    missing = _missing_keys(cfg)
    if not missing:
        return None
    from lmreason.cli import key_comment

    key = missing[0]
    group = key.split(".")[0]
    chosen = dict(choices or {}).get(group) if "." in key else None
    comment = key_comment(command, key, dict(choices or {}))
    about = ": ".join(
        part for part in (f"{group}={chosen}" if chosen else "", comment.removesuffix(" (required)")) if part
    )
    more = f" (and {', '.join(map(str, missing[1:]))})" if len(missing) > 1 else ""
    return f"{key} is required{f' ({about})' if about else ''}; give it as {key}=<value>{more}"


def _missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys whose value is `???`, outside the hydra node; reads raw values (resolves no interpolation:
    OmegaConf.missing_keys would, and fail on hydra.sweep.subdir's ${hydra.job.num} in a single run)."""
    keys = []
    for key in node.keys():
        if not prefix and key == "hydra":
            continue
        child = node._get_node(key)
        if child._is_missing():
            keys.append(f"{prefix}{key}")
        elif isinstance(child, DictConfig) and not child._is_none() and not child._is_interpolation():
            keys += _missing_keys(child, f"{prefix}{key}.")
    return keys


def in_multirun() -> bool:
    """True inside a job of `-m` (a sweep), False in a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def register_help_resolver() -> None:
    """`${lmreason_help:<command>}`, the template of conf/hydra/help/<command>.yaml: the text of `--help` around
    that file's examples (`header`). `$` is doubled: Hydra passes the help template through string.Template."""
    from lmreason.cli import command_help

    def render(command: str) -> str:
        from hydra.core.hydra_config import HydraConfig

        hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
        choices = dict(hydra_cfg.runtime.choices) if hydra_cfg is not None else {}
        overrides = list(hydra_cfg.overrides.task) if hydra_cfg is not None else []
        examples = str(hydra_cfg.help.header) if hydra_cfg is not None else ""
        return command_help(command, choices, overrides, examples).replace("$", "$$")

    if not OmegaConf.has_resolver("lmreason_help"):
        OmegaConf.register_new_resolver("lmreason_help", render, use_cache=False)


register_help_resolver()


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
                from hydra.core.hydra_config import HydraConfig

                missing = missing_value_message(
                    config_name, cfg, HydraConfig.get().runtime.choices if HydraConfig.initialized() else None
                )
                if missing:  # a multirun job (single runs are refused earlier, by RunDirGuard)
                    error = UserError(missing)
                    error.exit_code = (
                        2  # a config mistake, like those Hydra finds (cli.report_config_errors_in_one_line)
                    )
                    raise error
                results = run(cfg)
            except UserError as exc:
                print(f"lmreason {config_name}: error: {exc}", file=sys.stderr)
                if in_multirun() and not exc.stops_sweep:
                    return None
                sys.exit(exc.exit_code)
            except KeyboardInterrupt:
                print(f"lmreason {config_name}: interrupted", file=sys.stderr)
                sys.exit(130)
            except Exception as exc:  # a bug: keeps Hydra's report and traceback (cli.report_config_errors_in_one_line)
                exc.lmreason_in_command = True
                raise
            return objective(results) if objective else None

        return main

    return decorate
