"""`lmreason finetune`: fine-tune a pretrained model on a task."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from lmreason.atomic import atomic_write_json
from lmreason.commands.entry import hydra_command
from lmreason.errors import UserError
from lmreason.validation import validate

log = logging.getLogger(__name__)


def resolve_resume(cfg: DictConfig) -> tuple[DictConfig, Path]:
    """For resume=<run dir>: that run's own config (same data, schedule, seed, precision) and its dir.

    Raises:
        UserError: the dir is missing or is not a finetune run dir.
    """
    run_dir = Path(cfg.resume).expanduser()
    if not run_dir.is_dir():
        raise UserError(f"resume={cfg.resume}: no such directory; give a run dir printed by lmreason finetune")
    saved = run_dir / "checkpoints" / "last" / "config.yaml"
    if not saved.is_file():
        from lmreason.training.checkpoint import recover_checkpoint

        recover_checkpoint(run_dir / "checkpoints" / "last")
    if not saved.is_file():
        if (run_dir / "checkpoints").is_dir():
            raise UserError(
                f"resume={cfg.resume}: the run stopped before its first checkpoint was complete; "
                "nothing to resume, start it again as a new run"
            )
        raise UserError(
            f"resume={cfg.resume}: not a finetune run dir (no checkpoints/last/config.yaml); "
            "give the run dir of an interrupted finetune"
        )
    # Plain YAML (safe loader: no code runs, nothing is instantiated); merged onto the schema so a
    # tampered file fails validation.
    from omegaconf.errors import OmegaConfBaseException

    from lmreason.config import FinetuneCommandConfig
    from lmreason.evaluation.loading import saved_run_config

    saved_cfg = saved_run_config(saved.parent)
    try:
        schema = OmegaConf.structured(FinetuneCommandConfig)
        for key in ("task", "data"):  # option-dependent groups: typed by their own schemas
            schema[key] = saved_cfg[key]
        merged = OmegaConf.merge(schema, saved_cfg)
    except OmegaConfBaseException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{saved}: not a valid lmreason finetune config ({first[:160]}); the run dir is damaged or was edited"
        ) from None
    merged.resume = str(run_dir)
    # Code from a run dir runs only when this command asks for it, never because the saved config says so.
    merged.model.trust_remote_code = bool(cfg.model.trust_remote_code)
    # The saved device group is kept too: a change of precision would change the result.
    return merged, run_dir


def run(cfg: DictConfig) -> dict:
    """Fine-tune per `cfg` (or continue `cfg.resume`); returns the final metrics (also in metrics.json).

    A run that fails before its first training step leaves no run dir behind when this process
    made it (see `remove_stub_run_dir`); one that fails later keeps it, with metrics.json status
    "failed" and the reason.
    """
    from lmreason.training.trainer import FILE_ONLY, FinetuneRecipe
    from lmreason.ui import render_banner

    keep_file_only_records_off_the_console()
    hydra_dir = Path(cfg.output_dir)
    made_here = is_fresh_dir(hydra_dir)  # before anything of ours is written there
    run_dir, recipe = hydra_dir, None
    try:
        if cfg.resume:
            cfg, run_dir = resolve_resume(cfg)
            if run_is_complete(run_dir):
                return report_complete(run_dir)
        validate("finetune", cfg)  # before any data or model is loaded; in the try: a sweep records why a job failed
        absolute_paths(cfg)  # the saved config.yaml then works from any directory (resume, evaluate)
        run_dir = Path(cfg.resume or cfg.output_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe = FinetuneRecipe(cfg, run_dir)  # checks the config: may raise too
        recipe.setup()
        if recipe.dist.is_main:
            render_banner(recipe)
        results = recipe.train()
    except BaseException as exc:
        trained = recipe is not None and getattr(recipe, "step", 0) > 0
        # a config or data mistake before any training: no stub dir left behind
        removed = not trained and made_here and remove_stub_run_dir(hydra_dir, cfg)
        if not removed and isinstance(exc, Exception):
            if record_failure(recipe.run_dir if recipe else run_dir, cfg, exc):  # not over the trainer's own status
                log.info("status: failed (%s)", failure_reason(exc), extra=FILE_ONLY)
        raise
    finally:
        if recipe is not None:
            recipe.cleanup()
    if recipe.dist.is_main:
        from lmreason.ui import console

        best = results["best_metric"]
        console.print(
            f"[bold green]done[/] ({results['status']}): best {results['monitor']} = "
            f"{best:.4f} at step {results['best_step']}; {results['train_samples_per_s']:.1f} train samples/s. "
            f"Run dir: {run_dir}"
            if best is not None
            else f"done ({results['status']}). Run dir: {run_dir}"
        )
    return results


# --------------------------------------------------------------------------- paths
def _local_model_path(name: str | None) -> bool:
    """A model/tokenizer value that names an existing local path (packaged names win, as in loading)."""
    from lmreason.models.packaged import MINILM_NAME, SMOLLM2_CONFIG_NAME, SMOLLM2_NAME

    if not name or name.strip().lower() in (MINILM_NAME, SMOLLM2_NAME, SMOLLM2_CONFIG_NAME):
        return False
    return os.path.exists(os.path.expanduser(name))


def absolute_paths(cfg: DictConfig) -> None:
    """Resolve the path-valued keys against this process's cwd, in place: data.path (and task=multi's
    task.tasks.<name>.path), cache_dir, output_dir, resume, and model.name_or_path / model.tokenizer
    when they name a local path (a hub
    id is left alone). `~` is expanded; symlinks are kept as the user wrote them."""
    keys = ["cache_dir", "output_dir", "resume", "data.path"]
    keys += [k for k in ("model.name_or_path", "model.tokenizer") if _local_model_path(OmegaConf.select(cfg, k))]
    if cfg.task.name == "multi":  # each task entry's own data path
        keys += [f"task.tasks.{name}.path" for name in cfg.task.tasks or {}]
    with open_dict(cfg):
        for key in keys:
            value = OmegaConf.select(cfg, key, default=None)
            if isinstance(value, str) and value:
                absolute = os.path.abspath(os.path.expanduser(value))
                if absolute != value:
                    OmegaConf.update(cfg, key, absolute, merge=False)


# --------------------------------------------------------------------------- resume of a finished run
def run_is_complete(run_dir: Path) -> bool:
    """metrics.json says completed / early_stopped and describes the last checkpoint (same step)."""
    try:
        record = json.loads((run_dir / "metrics.json").read_text())
        saved = json.loads((run_dir / "checkpoints" / "last" / "lmreason.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("status") in ("completed", "early_stopped") and record.get("steps") == saved.get("step")


def report_complete(run_dir: Path) -> dict:
    """Nothing to train: say so and return the run's own record, leaving every file as it is."""
    from lmreason.training.trainer import FILE_ONLY
    from lmreason.ui import console

    record = json.loads((run_dir / "metrics.json").read_text())
    message = (
        f"{run_dir} is already complete ({record['status']} at step {record['steps']}); nothing to resume. "
        f"Evaluate it with: lmreason evaluate run={run_dir}"
    )
    log.info("resume: %s", message, extra=FILE_ONLY)
    console.print(message, soft_wrap=True, markup=False)  # one line: the command stays copyable
    return record


# --------------------------------------------------------------------------- failures
HYDRA_FILES = {".hydra", "finetune.log"}  # what Hydra writes into a run dir before the run starts


def is_fresh_dir(path: Path) -> bool:
    """The dir does not exist yet, or holds only what Hydra wrote for this run (no earlier run's files)."""
    try:
        return not path.exists() or set(os.listdir(path)) <= HYDRA_FILES
    except OSError:
        return False


def remove_stub_run_dir(path: Path, cfg: DictConfig) -> bool:
    """Delete a run dir this process made, after a failure before the first training step.

    Never: in a multirun job (the sweep report shows the failure), on a rank other than 0, a resume=
    dir, the cwd or a dir above it, or a dir that holds checkpoints or metrics (an earlier run's or ours).
    Returns whether it was removed.
    """
    import shutil

    from lmreason.commands.entry import in_multirun

    if int(os.environ.get("RANK", "0")) != 0 or in_multirun() or not path.is_dir():
        return False
    resolved = path.resolve()
    if cfg.resume and resolved == Path(cfg.resume).expanduser().resolve():
        return False
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        return False
    if (path / "checkpoints").exists() or (path / "metrics.json").exists() and not _own_running_record(path):
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def _own_running_record(path: Path) -> bool:
    try:
        record = json.loads((path / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return record.get("status") == "running" and record.get("process", {}).get("pid") == os.getpid()


# --------------------------------------------------------------------------- the run log
class _SkipFileOnly(logging.Filter):
    """Drops records logged with `extra=trainer.FILE_ONLY`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def keep_file_only_records_off_the_console() -> None:
    """Hydra's job logging sends every record to the console and to <run>/finetune.log; the run
    log's summary and validation lines are already on the console in rich form."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
            if not any(isinstance(f, _SkipFileOnly) for f in handler.filters):
                handler.addFilter(_SkipFileOnly())


def failure_reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


def record_failure(run_dir: Path, cfg: DictConfig, exc: Exception) -> bool:
    """metrics.json status "failed" with the error, for a run that failed before the trainer wrote a
    final status (bad data, bad option, a bug), so that a sweep report shows why. A run dir of an
    earlier run is never touched: only a fresh dir, or this process's own "running" record.
    Returns whether it wrote the record."""
    path = run_dir / "metrics.json"
    if int(os.environ.get("RANK", "0")) != 0:  # DDP: rank 0 writes
        return False
    try:
        monitor = cfg.train.early_stopping.monitor
    except Exception:  # this record must never hide the error itself
        monitor = None
    record = {"monitor": monitor, "best_metric": None, "history": []}
    if path.exists():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        if record.get("status") != "running" or record.get("process", {}).get("pid") != os.getpid():
            return False  # the trainer's own final status (diverged, interrupted) or another run's file
    elif (run_dir / "checkpoints").exists():
        return False
    record.update(status="failed", error=failure_reason(exc))
    try:
        atomic_write_json(path, record)
    except OSError:
        return False  # e.g. a read-only dir: the error itself is what the user must see
    return True


def objective(results: dict) -> float | None:
    """The value Hydra sweepers optimise: the best monitored validation metric.

    None, not NaN, when there is none (every validation NaN): the Optuna sweeper then records the
    trial as failed and goes on, while a NaN makes hydra-optuna-sweeper 1.3 with optuna 2.x crash
    the whole sweep (facebookresearch/hydra#2237). A diverged or failed job never gets here: in a
    multirun `hydra_command` returns None for it.
    """
    value = results.get("best_metric")
    return None if value is None or not math.isfinite(value) else float(value)


main = hydra_command("finetune", objective)(run)
