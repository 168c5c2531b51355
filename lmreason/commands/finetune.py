"""`lmreason finetune`: fine-tune a pretrained model on a task."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmreason.commands.entry import hydra_command
from lmreason.errors import UserError
from lmreason.validation import validate


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
            raise UserError(f"resume={cfg.resume}: the run stopped before its first checkpoint was complete; nothing to resume, start it again as a new run")
        raise UserError(f"resume={cfg.resume}: not a finetune run dir (no checkpoints/last/config.yaml); give the run dir of an interrupted finetune")
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
        raise UserError(f"{saved}: not a valid lmreason finetune config ({first[:160]}); the run dir is damaged or was edited") from None
    merged.resume = str(run_dir)
    # Code from a run dir runs only when this command asks for it, never because the saved config says so.
    merged.model.trust_remote_code = bool(cfg.model.trust_remote_code)
    # The saved device group is kept too: a change of precision would change the result.
    return merged, run_dir


def run(cfg: DictConfig) -> dict:
    """Fine-tune per `cfg` (or continue `cfg.resume`); returns the final metrics (also in metrics.json)."""
    from lmreason.training.trainer import FinetuneRecipe
    from lmreason.ui import render_banner

    if cfg.resume:
        cfg, run_dir = resolve_resume(cfg)
    else:
        run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe = None
    try:
        validate("finetune", cfg)  # before any data or model is loaded; in the try: a sweep records why a job failed
        recipe = FinetuneRecipe(cfg, run_dir)  # checks the config: may raise too
        recipe.setup()
        if recipe.dist.is_main:
            render_banner(recipe)
        results = recipe.train()
    except Exception as exc:
        record_failure(recipe.run_dir if recipe else run_dir, cfg, exc)
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
            f"Run dir: {run_dir}" if best is not None else f"done ({results['status']}). Run dir: {run_dir}"
        )
    return results


def record_failure(run_dir: Path, cfg: DictConfig, exc: Exception) -> None:
    """metrics.json status "failed" with the error, for a run that failed before the trainer wrote a
    final status (bad data, bad option, a bug), so that a sweep report shows why. A run dir of an
    earlier run is never touched: only a fresh dir, or this process's own "running" record."""
    path = run_dir / "metrics.json"
    if int(os.environ.get("RANK", "0")) != 0:  # DDP: rank 0 writes
        return
    try:
        monitor = cfg.train.early_stopping.monitor
    except Exception:  # this record must never hide the error itself
        monitor = None
    record = {"monitor": monitor, "best_metric": None, "history": []}
    if path.exists():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if record.get("status") != "running" or record.get("process", {}).get("pid") != os.getpid():
            return  # the trainer's own final status (diverged, interrupted) or another run's file
    elif (run_dir / "checkpoints").exists():
        return
    record.update(status="failed", error=str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")
    tmp = run_dir / "metrics.json.tmp"
    try:
        tmp.write_text(json.dumps(record, indent=2, default=float))
        os.replace(tmp, path)
    except OSError:
        pass  # e.g. a read-only dir: the error itself is what the user must see


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
