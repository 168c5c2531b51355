"""`lmreason evaluate`: metrics, per-slice tables and the in-distribution vs OOD gap."""

from __future__ import annotations

import json
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmreason.commands.entry import hydra_command
from lmreason.errors import UserError
from lmreason.validation import validate

MAX_SLICE_VALUES = 50  # a metadata column with more distinct values is an id, not a slice


def evaluation_config(cfg: DictConfig, checkpoint_dir: Path) -> DictConfig:
    """The model/task/data settings to rebuild the evaluation data with (the run's own unless overridden)."""
    from lmreason.evaluation.loading import saved_run_config, task_of_model_dir

    saved = saved_run_config(checkpoint_dir)
    data = cfg.data if cfg.data is not None else (saved.data if saved is not None else None)
    if data is None:
        raise UserError(f"checkpoint={checkpoint_dir} has no lmreason run config: say which data to evaluate on (e.g. data=local data.path=...)")
    max_length = saved.model.max_length if saved is not None else 512
    task = saved.task if saved is not None else OmegaConf.create({"name": task_of_model_dir(checkpoint_dir)})
    if cfg.get("task") is not None:  # other prompt settings, e.g. the format a fine-tuned run used, for its base model
        if cfg.task.name != task.name:
            raise UserError(f"task={cfg.task.name}: {checkpoint_dir} is a task={task.name} model; evaluate it with task={task.name} or leave task unset")
        task = cfg.task
    return OmegaConf.create({
        "model": {"name_or_path": str(checkpoint_dir), "max_length": max_length},
        "task": OmegaConf.to_container(task, resolve=True),
        "data": OmegaConf.to_container(data, resolve=True),
        "cache_dir": cfg.cache_dir,
        "force": False,
    })


def run(cfg: DictConfig) -> dict:
    """Evaluate a run or checkpoint on `cfg.split` (and the OOD split); returns {split: metrics}."""
    validate("evaluate", cfg)
    if cfg.sweep:
        if cfg.run or cfg.checkpoint:
            raise UserError("give sweep= (a multirun dir) or run=/checkpoint= (one model), not both")
        from lmreason.evaluation.sweep import sweep_report

        return sweep_report(cfg.sweep)
    from lmreason.data.prepare import prepare_data
    from lmreason.evaluation.loading import load_model_for_inference, resolve_checkpoint
    from lmreason.tasks import get_task
    from lmreason.training.device import resolve_device
    from lmreason.ui import console

    checkpoint_dir, run_dir = resolve_checkpoint(cfg.run, cfg.checkpoint)
    eval_cfg = evaluation_config(cfg, checkpoint_dir)
    _check_ood_asked_of_a_source_with_some(cfg, eval_cfg)
    device, precision = resolve_device(cfg.device)
    task = get_task(eval_cfg.task.name)
    model, tokenizer = load_model_for_inference(checkpoint_dir, eval_cfg.task.name, device)
    data = prepare_data(eval_cfg, tokenizer)
    if cfg.split not in data.splits:
        raise UserError(f"split={cfg.split} does not exist in this data; available splits: {', '.join(data.splits)}")
    splits = [cfg.split]
    if cfg.compare_ood and "ood" in data.splits and cfg.split != "ood":
        splits.append("ood")
    out_root = (run_dir if run_dir is not None else Path(cfg.output_dir)) / "eval"
    console.print(f"[bold]evaluate[/] {checkpoint_dir} on {data.summary.get('source')} ({', '.join(splits)}); device {device} ({precision})")
    results = {}
    for split in splits:
        results[split] = task.evaluate_split(
            model=model, tokenizer=tokenizer, dataset=data.splits[split], split=split, data=data,
            cfg=cfg, eval_cfg=eval_cfg, device=device, precision=precision, out_dir=out_root / split,
            slice_columns=_slice_columns(cfg, data, data.splits[split]),
        )
    if len(splits) == 2:
        from lmreason.evaluation.metrics import gap_table
        from lmreason.evaluation.report import gap_rich_table

        gap = gap_table(results[splits[0]], results["ood"], keys=task.gap_keys)
        results["gap"] = gap
        _write_json(out_root / "gap.json", {"in_distribution_split": splits[0], "ood_split": "ood", "gap": gap})
        console.print(gap_rich_table(gap, id_name=splits[0], ood_name="ood"))
    if run_dir is not None:
        _log_tensorboard(run_dir, results, out_root)
    console.print(f"reports written to {out_root}")
    return results


def _check_ood_asked_of_a_source_with_some(cfg: DictConfig, eval_cfg: DictConfig) -> None:
    """split=ood of data that has none fails before the model loads or any data is prepared."""
    from lmreason.data.sources import has_ood_split

    if cfg.split == "ood" and has_ood_split(eval_cfg.data) is False:
        raise UserError(
            f"split=ood: the data ({eval_cfg.data.get('name', eval_cfg.data.source)}, source {eval_cfg.data.source}) has no OOD split; "
            "evaluate another split, or give data with one: data=local data.path=<dir with an ood.* file> or a reasoning data.ood_config"
        )


def _slice_columns(cfg: DictConfig, data, dataset) -> list[str]:
    if cfg.slice_columns is not None:
        missing = [c for c in cfg.slice_columns if c not in dataset.column_names]
        if missing:
            raise UserError(f"slice_columns: no column {', '.join(missing)} in this data; metadata columns are: {', '.join(data.metadata_columns) or 'none'}")
        return list(cfg.slice_columns)
    # A column with one value in this split says nothing; one with very many is an id, not a slice.
    return [c for c in data.metadata_columns
            if c in dataset.column_names and 2 <= len(set(dataset[c])) <= MAX_SLICE_VALUES]


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    os.replace(tmp, path)


def _log_tensorboard(run_dir: Path, results: dict, out_root: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    from lmreason.evaluation.plots import confusion_figure, reliability_figure

    writer = SummaryWriter(log_dir=str(run_dir / "tb"))
    for split, metrics in results.items():
        if split == "gap":
            continue
        for key in ("acc", "f1_macro", "ece", "loss", "exact_match", "perplexity"):
            if isinstance(metrics.get(key), (int, float)):
                writer.add_scalar(f"{split}/{key}", metrics[key], 0)
        if "confusion" in metrics:
            writer.add_figure(f"{split}/confusion_matrix", confusion_figure(metrics["confusion"], metrics["label_names"], f"{split} confusion"))
        if "reliability" in metrics:
            writer.add_figure(f"{split}/reliability", reliability_figure(metrics["reliability"], metrics["ece"], f"{split} reliability"))
    writer.close()


main = hydra_command("evaluate")(run)
