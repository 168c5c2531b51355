"""`lmreason finetune`: fine-tune a pretrained model on a task."""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmreason.commands.entry import hydra_command
from lmreason.errors import UserError


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
        raise UserError(f"resume={cfg.resume}: not a finetune run dir (no checkpoints/last/config.yaml); give the run dir of an interrupted finetune")
    # Plain YAML (no code runs); merged onto the schema so a tampered file fails validation.
    from lmreason.config import FinetuneCommandConfig

    schema = OmegaConf.structured(FinetuneCommandConfig)
    saved_cfg = OmegaConf.load(saved)
    for key in ("task", "data"):  # option-dependent groups: typed by their own schemas
        schema[key] = saved_cfg[key]
    merged = OmegaConf.merge(schema, saved_cfg)
    merged.resume = str(run_dir)
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
    recipe = FinetuneRecipe(cfg, run_dir)
    try:
        recipe.setup()
        if recipe.dist.is_main:
            render_banner(recipe)
        results = recipe.train()
    finally:
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


def objective(results: dict) -> float:
    """The value Hydra sweepers optimise: the best monitored validation metric (NaN when diverged)."""
    value = results.get("best_metric")
    return float("nan") if value is None else float(value)


main = hydra_command("finetune", objective)(run)
