"""`evaluate` of a task=multi run: every head (or the one `head=` names) on its own task's data.

Each head dir (`checkpoints/best/heads/<task>/`) is a plain classifier with a task=cls config.yaml
for its data, so each is evaluated exactly as a single-task checkpoint: eval/<task>/<split>/ and,
where that task's data has an OOD split, eval/<task>/gap.json. A summary of the heads follows in
eval/multitask.json and one table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from omegaconf import DictConfig

from lmreason.errors import UserError


def heads_to_evaluate(cfg: DictConfig, checkpoint_dir: Path) -> list[str] | None:
    """The heads to evaluate of a multi-task checkpoint (None: it is a single model).

    Raises:
        UserError: head= names no head; head= on a single model; data= for several heads at once.
    """
    from lmreason.tasks.multi import head_names

    heads = head_names(checkpoint_dir)
    if heads is None:
        if cfg.get("head"):
            raise UserError(f"head={cfg.head}: {checkpoint_dir} is a single-task model; head= picks a task=multi head")
        return None
    if cfg.get("head"):
        if cfg.head not in heads:
            raise UserError(
                f"head={cfg.head}: no such head in {checkpoint_dir}; its heads are {', '.join(heads)} "
                "(or leave head unset)"
            )
        heads = [str(cfg.head)]
    if cfg.get("data") is not None and len(heads) > 1:
        raise UserError(
            f"data= with a multi-task run: say which head reads it, head=<{'|'.join(heads)}> "
            "(each head has its own labels)"
        )
    return heads


def evaluate_heads(
    cfg: DictConfig,
    checkpoint_dir: Path,
    run_dir: Path | None,
    out_root: Path,
    heads: list[str],
    evaluate_model: Callable,
) -> dict:
    """{head: that head's evaluate results} and eval/multitask.json; `evaluate_model` is evaluate's own."""
    from lmreason.evaluation.outputs import write_json
    from lmreason.ui import console

    results = {name: evaluate_model(cfg, checkpoint_dir / "heads" / name, run_dir, out_root / name) for name in heads}
    summary = {name: head_summary(result, cfg.split) for name, result in results.items()}
    write_json(out_root / "multitask.json", {"split": cfg.split, "heads": summary})
    console.print(multitask_table(summary, cfg.split))
    return results


def head_summary(result: dict, split: str) -> dict:
    """One head's headline: accuracy on the split, on OOD, and the gap (None where there is no OOD)."""
    gap = result.get("gap") or {}
    return {
        "n": result[split].get("n"),
        "acc": result[split].get("acc"),
        "f1_macro": result[split].get("f1_macro"),
        "ood_acc": result["ood"].get("acc") if "ood" in result else None,
        "acc_gap": (gap.get("acc") or {}).get("gap") if isinstance(gap.get("acc"), dict) else None,
    }


def multitask_table(summary: dict, split: str):
    from rich.table import Table

    table = Table(title=f"multi-task: every head on its own data ({split})", title_justify="left")
    for column in ("head", "n", "acc", "f1_macro", "ood acc", "gap (id - ood)"):
        table.add_column(column, justify="left" if column == "head" else "right")
    for name, row in summary.items():
        shown = [row["n"], row["acc"], row["f1_macro"], row["ood_acc"], row["acc_gap"]]
        table.add_row(name, *("-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v)) for v in shown))
    return table
