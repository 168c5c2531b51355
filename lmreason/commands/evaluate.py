"""`lmreason evaluate`: metrics, per-slice tables and the in-distribution vs OOD gap."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from lmreason.commands.entry import hydra_command
from lmreason.errors import UserError
from lmreason.validation import validate


def run(cfg: DictConfig) -> dict:
    """Evaluate a run or checkpoint on `cfg.split` (and the OOD split); returns {split: metrics}."""
    validate("evaluate", cfg)
    if cfg.sweep:
        from lmreason.evaluation.sweep import sweep_report

        return sweep_report(cfg.sweep)
    if cfg.get("compare") is not None:  # reads the runs' eval/ records: nothing is loaded or predicted
        from lmreason.evaluation.compare import compare_command

        return compare_command(list(cfg.compare), Path(cfg.output_dir))
    from lmreason.evaluation.loading import resolve_checkpoint

    checkpoint_dir, run_dir = resolve_checkpoint(cfg.run, cfg.checkpoint, allow_multitask=True)
    out_root = (run_dir if run_dir is not None else Path(cfg.output_dir)) / "eval"
    from lmreason.evaluation.multitask import evaluate_heads, heads_to_evaluate

    heads = heads_to_evaluate(cfg, checkpoint_dir)  # a task=multi checkpoint: its heads (checked before any data)
    if heads is not None:
        return evaluate_heads(cfg, checkpoint_dir, run_dir, out_root, heads, evaluate_model)
    return evaluate_model(cfg, checkpoint_dir, run_dir, out_root)


def evaluate_model(cfg: DictConfig, checkpoint_dir: Path, run_dir: Path | None, out_root: Path) -> dict:
    """Evaluate one model dir (a run's checkpoint, or one head of a multi-task one) into `out_root`."""
    from lmreason.data.prepare import prepare_data
    from lmreason.evaluation.loading import (
        checkpoint_max_length,
        evaluation_config,
        load_model_for_inference,
        saved_run_config,
    )
    from lmreason.evaluation.outputs import head_prefix, log_to_tensorboard, write_json
    from lmreason.evaluation.predict import InferenceSession
    from lmreason.evaluation.slices import slice_columns
    from lmreason.evaluation.split import GAP_KEYS, SplitRequest, evaluate_split
    from lmreason.tasks import get_task
    from lmreason.training.device import resolve_device
    from lmreason.ui import console

    saved = saved_run_config(checkpoint_dir)
    eval_cfg = evaluation_config(cfg, checkpoint_dir, saved)
    robustness_cfg = cfg.diagnostics.robustness if cfg.get("diagnostics") else None
    if robustness_cfg is not None:  # bad settings fail before the model loads
        from lmreason.evaluation.robustness import check_config

        check_config(robustness_cfg, eval_cfg.task.name)
    attribution_cfg = cfg.diagnostics.attribution if cfg.get("diagnostics") else None
    if attribution_cfg is not None:
        from lmreason.evaluation.attribution import check_config as check_attribution

        check_attribution(attribution_cfg, key="diagnostics.attribution")
    calibration_cfg = cfg.diagnostics.calibration if cfg.get("diagnostics") else None
    if calibration_cfg is not None:
        from lmreason.evaluation.calibration import check_config as check_calibration

        check_calibration(calibration_cfg, eval_cfg.task.name)
    _check_ood_asked_of_a_source_with_some(cfg, eval_cfg)
    device, precision = resolve_device(cfg.device)
    task = get_task(eval_cfg.task)
    backends = [cfg.backend] if isinstance(cfg.backend, str) else [str(b) for b in cfg.backend]
    if backends == ["torch"]:
        model, tokenizer = load_model_for_inference(checkpoint_dir, task.name, device, cfg.device.fast_paths)
    else:  # an exported graph behind the same batching, or several backends compared (lmreason/evaluation/backends.py)
        from lmreason.evaluation.backends import check_task, load_for_backend, record_backends

        check_task(backends, task.name, checkpoint_dir)
        model, tokenizer, device, precision = load_for_backend(
            backends[0], checkpoint_dir, task.name, device, precision, cfg
        )
    eval_cfg.model.max_length = checkpoint_max_length(saved, tokenizer)
    data = prepare_data(eval_cfg, task, tokenizer)
    if cfg.split not in data.splits:
        raise UserError(f"split={cfg.split} does not exist in this data; available splits: {', '.join(data.splits)}")
    if calibration_cfg is not None and calibration_cfg.fit_split not in data.splits:
        raise UserError(
            f"diagnostics.calibration.fit_split={calibration_cfg.fit_split} does not exist in this data; "
            f"available splits: {', '.join(data.splits)}"
        )
    splits = [cfg.split]
    if cfg.compare_ood and "ood" in data.splits and cfg.split != "ood":
        splits.append("ood")
    console.print(
        f"[bold]evaluate[/] {checkpoint_dir} on {data.summary.get('source')} ({', '.join(splits)}); "
        f"device {device} ({precision})" + ("" if backends == ["torch"] else f"; backend {', '.join(backends)}")
    )
    session = InferenceSession(
        model, tokenizer, device, precision, cfg.batch_size, eval_cfg.model.max_length, cfg.generation
    )
    results, requests = {}, {}
    for split in splits:
        dataset = data.splits[split]
        request = SplitRequest(
            name=split,
            dataset=dataset,
            out_dir=out_root / split,
            label_names=data.label_names,
            slice_columns=slice_columns(cfg.slice_columns, data.metadata_columns, dataset),
        )
        results[split] = evaluate_split(session, task, request)
        requests[split] = request
    if backends != ["torch"]:
        record_backends(backends, session, checkpoint_dir, task, requests, results, cfg)
    about = None
    if len(splits) == 2:
        from lmreason.data.sources import ood_description
        from lmreason.evaluation.metrics import gap_table
        from lmreason.evaluation.per_example import add_gap_cis, read_split_examples
        from lmreason.evaluation.report import gap_rich_table

        gap = gap_table(results[splits[0]], results["ood"], keys=GAP_KEYS[task.name])
        add_gap_cis(gap, read_split_examples(out_root / splits[0]), read_split_examples(out_root / "ood"))
        results["gap"] = gap
        write_json(out_root / "gap.json", {"in_distribution_split": splits[0], "ood_split": "ood", "gap": gap})
        about = ood_description(eval_cfg.data)
        console.print(gap_rich_table(gap, id_name=splits[0], ood_name="ood", about=about))
    if robustness_cfg is not None:  # diagnostics on the same session and splits (eval/<split>/robustness.json)
        from lmreason.evaluation.robustness import run_robustness

        results["robustness"] = run_robustness(
            session, task, list(requests.values()), robustness_cfg, run_dir, cfg.cache_dir
        )
    if attribution_cfg is not None:  # eval/<split>/attribution.json and attributions.jsonl
        from lmreason.evaluation.attribution_run import run_attribution

        results["attribution"] = run_attribution(
            session, task, list(requests.values()), attribution_cfg, run_dir, data.splits.get("train"), data.label_names
        )
        if robustness_cfg is not None:  # the suites' flipped examples, attributed before and after
            from lmreason.evaluation.flip_attribution import attribute_flips

            results["attribution_flips"] = attribute_flips(session, task, list(requests.values()), attribution_cfg)
    if calibration_cfg is not None:  # eval/calibration.json, <checkpoint>/calibration.json (the temperature infer uses)
        from lmreason.evaluation.calibration import run_calibration

        fit_request = requests.get(calibration_cfg.fit_split) or SplitRequest(
            name=calibration_cfg.fit_split,
            dataset=data.splits[calibration_cfg.fit_split],
            out_dir=out_root / calibration_cfg.fit_split,
            label_names=data.label_names,
        )
        results["calibration"] = run_calibration(
            session, task, list(requests.values()), calibration_cfg, fit_request, checkpoint_dir, run_dir
        )
    from lmreason.evaluation.report_context import run_config, run_summary, summary_markdown
    from lmreason.evaluation.report_page import write_run_report

    config = run_config(run_dir, saved)
    if run_dir is not None:
        summary = run_summary(out_root, splits, config, task.name, about)
        log_to_tensorboard(run_dir, results, summary_markdown(summary), prefix=head_prefix(run_dir, out_root))
    page = write_run_report(out_root, run_dir, splits, config, task.name, about)
    console.print(f"reports written to {out_root}")
    console.print(f"report: [link=file://{page.resolve()}]file://{page.resolve()}[/link]")
    return results


def _check_ood_asked_of_a_source_with_some(cfg: DictConfig, eval_cfg: DictConfig) -> None:
    """split=ood of data that has none fails before the model loads or any data is prepared."""
    from lmreason.data.sources import has_ood_split

    if cfg.split == "ood" and has_ood_split(eval_cfg.data) is False:
        raise UserError(
            f"split=ood: the data ({eval_cfg.data.get('name', eval_cfg.data.source)}, source {eval_cfg.data.source}) "
            "has no OOD split; evaluate another split, or give data with one: "
            "data=local data.path=<dir with an ood.* file> or a reasoning data.ood_config"
        )


main = hydra_command("evaluate")(run)
