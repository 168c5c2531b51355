"""`evaluate backend=...`: evaluate with an onnx backend, or compare several backends on the same splits.

The first backend listed is the one whose files `evaluate` writes as always (eval/<split>/metrics.json,
predictions.jsonl, figures); its metrics.json then says which backend made it (`"backend"`). With more
than one backend (`backend=[torch,onnx-int8]`) each is run over every evaluated split, the same batches,
and eval/<split>/metrics.json gains a `backends` entry, one row per backend:
    {"torch": {"acc": .., "f1_macro": .., "ece": .., "loss": .., "samples_per_s": .., "agreement": 1.0},
     "onnx-int8": {..., "agreement": 0.994}}
(`agreement`: the share of examples whose predicted label equals the first backend's), also printed
as one table per split: the accuracy cost of int8 next to its speed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lmreason.errors import UserError
from lmreason.evaluation.onnx_backend import load_backend


def check_task(backends: list[str], task_name: str, checkpoint_dir: Path) -> None:
    """Before any work: the onnx backends are for classifiers."""
    others = [b for b in backends if b != "torch"]
    if others and task_name != "cls":
        raise UserError(
            f"backend={others[0]} supports task=cls (classification) models; {checkpoint_dir} is a "
            f"task={task_name} model: use backend=torch"
        )


def load_for_backend(backend: str, checkpoint_dir: Path, task_name: str, device, precision, cfg):
    """(model, tokenizer, device, precision) for an InferenceSession of `backend`."""
    if backend == "torch":
        from lmreason.evaluation.loading import load_model_for_inference

        model, tokenizer = load_model_for_inference(checkpoint_dir, task_name, device, cfg.device.fast_paths)
        return model, tokenizer, device, precision
    return load_backend(checkpoint_dir, task_name, backend, device, cfg.cache_dir)


def record_backends(
    backends: list[str], primary_session, checkpoint_dir: Path, task, requests: dict, results: dict, cfg
) -> None:
    """Say in each split's metrics.json which backend wrote it; with several backends, add the comparison."""
    from lmreason.evaluation.outputs import write_json
    from lmreason.evaluation.predict import InferenceSession
    from lmreason.training.device import resolve_device

    sessions = {backends[0]: primary_session}
    for backend in backends[1:]:
        device, precision = resolve_device(cfg.device)
        model, tokenizer, device, precision = load_for_backend(
            backend, checkpoint_dir, task.name, device, precision, cfg
        )
        sessions[backend] = InferenceSession(
            model,
            tokenizer,
            device,
            precision,
            primary_session.batch_size,
            primary_session.max_length,
            primary_session.generation,
        )
    for split, request in requests.items():
        metrics = results[split]
        metrics["backend"] = backends[0]
        if len(backends) > 1:
            metrics["backends"] = _compare(sessions, task, request)
            _print_table(split, metrics["backends"], backends[0])
        write_json(request.out_dir / "metrics.json", metrics)


def _compare(sessions: dict, task, request) -> dict:
    from lmreason.evaluation.loading import label_names_of
    from lmreason.evaluation.metrics import classification_metrics
    from lmreason.evaluation.predict import predict_split

    rows, first = {}, None
    for backend, session in sessions.items():
        predicted = predict_split(session, task, request.dataset, request.label_names)
        names = label_names_of(session.model)
        metrics = classification_metrics(predicted.labels, predicted.probs, names, loss=predicted.loss)
        choice = predicted.probs.argmax(axis=1)
        first = choice if first is None else first
        rows[backend] = {
            "acc": metrics["acc"],
            "f1_macro": metrics["f1_macro"],
            "ece": metrics["ece"],
            "loss": metrics["loss"],
            "samples_per_s": len(choice) / predicted.seconds if predicted.seconds > 0 else None,
            "agreement": float(np.mean(choice == first)) if len(choice) else 1.0,
        }
    return rows


def _print_table(split: str, rows: dict, first: str) -> None:
    from rich.table import Table

    from lmreason.ui import console

    table = Table(title=f"{split}: backends compared (same examples, same batches)")
    for column in ("backend", "acc", "f1_macro", "ece", "loss", "samples/s", f"labels = {first}"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for backend, row in rows.items():
        speed = f"{row['samples_per_s']:.1f}" if row["samples_per_s"] else "-"
        table.add_row(
            backend,
            f"{row['acc']:.4f}",
            f"{row['f1_macro']:.4f}",
            f"{row['ece']:.4f}",
            f"{row['loss']:.4f}",
            speed,
            f"{row['agreement']:.2%}",
        )
    console.print(table)
