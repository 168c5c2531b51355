"""Terminal output: one rich console, the prepare summary and the training banner."""

from __future__ import annotations

import os

from rich.console import Console
from rich.table import Table

# Hydra captures stdout in multirun jobs; a width keeps tables readable when not a TTY.
console = Console(width=None if os.isatty(1) else 120, highlight=False)


def render_prepare_summary(prepared, out: Console = console) -> None:
    summary = prepared.summary
    state = "reused cache" if prepared.reused else "built cache"
    out.print(f"[bold]prepare[/] {summary['source']} -> {prepared.path} ([green]{state}[/])")
    table = Table(title=f"{summary['task']} data, max_length {summary['max_length']}", title_justify="left")
    table.add_column("split")
    table.add_column("rows", justify="right")
    table.add_column("tokens p50 / p95 / max", justify="right")
    table.add_column("truncated", justify="right")
    if summary["task"] in ("cls", "multi"):
        table.add_column("labels")
    for name, info in summary["splits"].items():
        row = [
            name,
            f"{info['rows']:,}",
            f"{info['tokens_p50']} / {info['tokens_p95']} / {info['tokens_max']}",
            f"{info['truncated_share']:.1%}",
        ]
        if summary["task"] in ("cls", "multi"):
            labels = info.get("labels", {})
            shown = ", ".join(f"{k}: {v}" for k, v in list(labels.items())[:8])
            row.append(shown + (f", ... ({len(labels)} labels)" if len(labels) > 8 else ""))
        table.add_row(*row)
    out.print(table)
    if summary.get("augmentation"):
        out.print(augmentation_line(summary["augmentation"]))
        for note in summary["augmentation"].get("notes", []):
            out.print(f"[yellow]augmentation: {note}[/]")
    if prepared.metadata_columns:
        out.print(f"metadata kept for per-slice metrics: {', '.join(prepared.metadata_columns)}")


def augmentation_line(report: dict) -> str:
    """'augmentation (train only): eda +40 (random_swap 12, ...); train 100 -> 140 rows; dropped: duplicate 3'."""
    parts = []
    for method, added in report["methods"].items():
        ops = [f"{key.split('/', 1)[1]} {n}" for key, n in report["operations"].items() if key.startswith(f"{method}/")]
        parts.append(f"{method} +{added:,}" + (f" ({', '.join(ops)})" if ops else ""))
    dropped = ", ".join(f"{why.replace('_', ' ')} {n:,}" for why, n in report["dropped"].items())
    return (
        f"augmentation (train only): {'; '.join(parts)}; "
        f"train {report['train_rows_before']:,} -> {report['train_rows_after']:,} rows"
        + (f"; dropped: {dropped}" if dropped else "")
    )


def render_banner(recipe, out: Console = console) -> None:
    cfg, t = recipe.cfg, recipe.cfg.train
    counts = recipe.param_counts
    effective = t.batch_size * t.grad_accum_steps * recipe.dist.world_size
    table = Table(title="lmreason finetune", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = {
        "run dir": str(recipe.run_dir),
        "model": f"{cfg.model.name_or_path} ({'random init' if cfg.model.from_scratch else 'pretrained'})",
        "data": f"{recipe.data.summary.get('source')}: "
        f"{len(recipe.train_split):,} train / {len(recipe.val_split):,} validation examples",
    }
    if recipe.data.summary.get("augmentation"):
        rows["augmentation"] = augmentation_line(recipe.data.summary["augmentation"]).split(": ", 1)[1]
    rows |= {
        "effective batch": f"{effective} = {t.batch_size} per step x {t.grad_accum_steps} accumulation "
        f"x {recipe.dist.world_size} process(es)",
        "steps": f"{recipe.total_steps:,} ({recipe.steps_per_epoch:,} per epoch)"
        + (f", resuming at {recipe.step:,}" if recipe.step else ""),
        "parameters": f"{counts['trainable']:,} trainable, {counts['frozen']:,} frozen",
        "optimizer": f"{cfg.optimizer.name} lr {cfg.optimizer.lr:g}, {cfg.scheduler.name} schedule, "
        f"weight decay {cfg.regularization.weight_decay:g}",
        "device": f"{recipe.device} ({recipe.precision}, {_threads()})",
        "fast paths": recipe.fast_paths.describe(),
        **({"compile": recipe.compiled} if getattr(recipe, "compiled", None) else {}),
        **({"adversarial": recipe.adversarial.describe()} if getattr(recipe, "adversarial", None) else {}),
        "early stopping": (
            f"{t.early_stopping.monitor} ({t.early_stopping.mode}), patience {t.early_stopping.patience}"
            if t.early_stopping.enabled
            else "off"
        ),
    }
    for key, value in rows.items():
        table.add_row(key, value)
    out.print(table)


def _threads() -> str:
    from lmreason.training import device

    choice = device.last_thread_choice
    return choice.describe() if choice is not None else f"{__import__('torch').get_num_threads()} threads"
