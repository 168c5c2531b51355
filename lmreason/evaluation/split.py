"""Evaluate one prepared split: predict, score, slice, write its files and print its tables.

`evaluate_split(session, task, request)` picks the evaluator of the task (classification or
generation). Each writes into `request.out_dir`: metrics.json, the per-example records
(predictions.jsonl or generations.jsonl) and, for classification, the confusion matrix and
reliability diagram; and returns the metrics dict.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmreason.evaluation.outputs import save_classification_figures, write_json, write_jsonl
from lmreason.evaluation.per_example import classification_examples, generation_examples
from lmreason.evaluation.predict import InferenceSession, predict_split, reference_loss

# Metrics compared between the evaluated split and OOD, per task.
GAP_KEYS = {"cls": ("acc", "f1_macro", "ece", "loss"), "gen": ("exact_match", "score", "loss", "perplexity")}


@dataclass
class SplitRequest:
    """What to evaluate and where to write it."""

    name: str  # split name: test, ood, ...
    dataset: Any  # the prepared split (datasets.Dataset)
    out_dir: Path  # eval/<name>/
    label_names: list[str] = field(default_factory=list)  # the data's label set (classification)
    slice_columns: list[str] = field(default_factory=list)
    generated: dict | None = None  # task=gen, filled by evaluate_generation: {"ids", "scores"} of each row's answer


def evaluate_split(session: InferenceSession, task, request: SplitRequest) -> dict:
    evaluators = {"cls": evaluate_classification, "gen": evaluate_generation}
    return evaluators[task.name](session, task, request)


def evaluate_classification(session: InferenceSession, task, request: SplitRequest) -> dict:
    """Accuracy, per-class P/R/F1, confusion, calibration and slices of one classification split."""
    # scikit-learn (the confusion matrix, per-class P/R/F1) loads here, before the timed span: its first
    # import (1.3-1.9 s on 2 cores) is start-up, like loading the model, not per-example work
    import sklearn.metrics  # noqa: F401

    from lmreason.errors import UserError
    from lmreason.evaluation.loading import label_names_of
    from lmreason.evaluation.metrics import classification_metrics, reliability_bins, slice_metrics
    from lmreason.evaluation.report import metrics_table, slices_table

    dataset, model_labels = request.dataset, label_names_of(session.model)
    try:
        predicted = predict_split(session, task, dataset, request.label_names)
    except UserError as exc:
        raise UserError(f"split {request.name}: {exc}") from None
    labels, probs = predicted.labels, predicted.probs
    began = time.perf_counter()
    metrics = classification_metrics(labels, probs, model_labels, loss=predicted.loss)
    # throughput of batching + forward passes + metrics (model loading, plots and files excluded)
    metrics["eval_seconds"] = predicted.seconds + time.perf_counter() - began
    metrics["samples_per_s"] = len(labels) / metrics["eval_seconds"] if metrics["eval_seconds"] > 0 else None
    metrics["reliability"] = reliability_bins(probs.max(axis=1), probs.argmax(axis=1) == labels)
    metrics["slices"] = {col: slice_metrics(labels, probs, dataset[col], model_labels) for col in request.slice_columns}
    metrics["split"] = request.name
    examples = classification_examples(
        dataset["text"],
        [model_labels[i] for i in labels],
        probs.argmax(axis=1) == labels,
        probs.max(axis=1),
        _columns(request),
    )
    _add_intervals(metrics, examples, request.slice_columns)
    save_classification_figures(metrics, model_labels, request.name, request.out_dir)
    choice, texts = probs.argmax(axis=1), dataset["text"]
    rows = [
        {
            "text": texts[i],
            "label": model_labels[labels[i]],
            "predicted": model_labels[choice[i]],
            "confidence": float(probs[i, choice[i]]),
        }
        for i in range(len(labels))
    ]
    tables = [metrics_table(metrics, f"{request.name}: {metrics['n']} examples")]
    tables += [slices_table(slices, col) for col, slices in metrics["slices"].items()]
    _write_and_show(request, metrics, ("predictions.jsonl", rows), tables)
    return metrics


def evaluate_generation(session: InferenceSession, task, request: SplitRequest) -> dict:
    """Loss/perplexity of the references, then generated answers scored, sliced and written."""
    from lmreason.evaluation.generation import decode_answers, generate_ids
    from lmreason.evaluation.report import generation_slices_table, generation_table
    from lmreason.evaluation.scoring import is_reasoning, score_rows
    from lmreason.evaluation.slices import generation_slices

    dataset, gen = request.dataset, session.generation
    loss, count = reference_loss(session, task, dataset)
    prompts = [ids[:n] for ids, n in zip(dataset["input_ids"], dataset["prompt_length"])]
    ids, finished = generate_ids(session.model, session.tokenizer, prompts, gen, session.device, session.precision)
    texts = decode_answers(session.tokenizer, ids)
    scores = score_rows(dataset, texts)
    request.generated = {"ids": ids, "scores": scores}  # diagnostics=[attribution] explains these answers
    correct = scores >= 1.0
    metrics = {
        "split": request.name,
        "n": len(texts),
        "exact_match": float(correct.mean()),
        "score": float(scores.mean()),
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "completion_tokens": count,
        "unfinished": float(1 - np.mean(finished)),  # answers cut at generation.max_new_tokens
        "scorer": "reasoning-gym" if is_reasoning(dataset) else "normalised exact match",
        "generation": {k: gen[k] for k in ("do_sample", "max_new_tokens", "temperature", "top_p", "batch_size")},
        "slices": {col: generation_slices(correct, scores, dataset[col]) for col in request.slice_columns},
    }
    examples = generation_examples(dataset["prompt"], dataset["completion"], correct, scores, _columns(request))
    _add_intervals(metrics, examples, request.slice_columns)
    rows = [
        {
            "prompt": prompt,
            "reference": reference,
            "generated": texts[i],
            "score": float(scores[i]),
            "correct": bool(correct[i]),
        }
        for i, (prompt, reference) in enumerate(zip(dataset["prompt"], dataset["completion"]))
    ]
    tables = [generation_table(metrics, f"{request.name}: {metrics['n']} examples")]
    tables += [generation_slices_table(slices, col) for col, slices in metrics["slices"].items()]
    _write_and_show(request, metrics, ("generations.jsonl", rows), tables)
    return metrics


def _columns(request: SplitRequest) -> dict[str, list]:
    return {c: list(request.dataset[c]) for c in request.slice_columns}


def _add_intervals(metrics: dict, examples, slice_columns: list[str]) -> None:
    """95% bootstrap intervals of the headline metrics (acc_ci, ece_ci / exact_match_ci, score_ci) and of
    each slice's (lmreason/evaluation/statistics.py): over the examples evaluated."""
    from lmreason.evaluation.per_example import add_slice_cis, metric_cis

    metrics.update(metric_cis(examples))
    for column in slice_columns:
        add_slice_cis(metrics["slices"][column], examples, column)


def _write_and_show(request: SplitRequest, metrics: dict, records: tuple[str, list[dict]], tables: list) -> None:
    """metrics.json and the per-example records (each row with its slice columns' values) in the split's
    out dir, then the tables on the terminal."""
    from lmreason.ui import console

    name, rows = records
    meta = {c: request.dataset[c] for c in request.slice_columns}
    for i, row in enumerate(rows):
        row.update({c: values[i] for c, values in meta.items()})
    write_jsonl(request.out_dir / name, rows)
    write_json(request.out_dir / "metrics.json", metrics)
    for table in tables:
        console.print(table)
