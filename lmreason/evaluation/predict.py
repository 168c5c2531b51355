"""Run a loaded model over a prepared split or over raw texts: the one place that batches and predicts.

An `InferenceSession` is what every prediction needs: the model in eval mode, its tokenizer,
the device and precision, the batch size, the token budget and the generation settings.
Batches go longest-first (no compute on padding) under `inference_mode`; results come back
in input order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from lmreason.errors import UserError
from lmreason.evaluation.batch_workers import batch_workers, run_batches
from lmreason.evaluation.loading import label_names_of


@dataclass
class InferenceSession:
    model: Any
    tokenizer: Any
    device: Any
    precision: str
    batch_size: int
    max_length: int  # token budget per input (the checkpoint's model.max_length)
    generation: Any = None  # generation settings (task=gen): do_sample, max_new_tokens, ...


@dataclass
class SplitPredictions:
    """Classification over a split, in the split's row order."""

    labels: np.ndarray  # (N,) gold label ids in the model's label order
    probs: np.ndarray  # (N, C) class probabilities
    loss: float  # mean cross-entropy
    seconds: float  # batching + forward passes
    logits: np.ndarray | None = None  # (N, C) the logits the probabilities are the softmax of (temperature scaling)


def restore_order(batches: list[np.ndarray]) -> np.ndarray:
    """Index into batch-order results that gives input order: row i of the input is at restored[i]."""
    order = np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
    restored = np.empty_like(order)
    restored[order] = np.arange(len(order))
    return restored


def predict_split(session: InferenceSession, task, dataset, label_names: list[str]) -> SplitPredictions:
    """Class probabilities for a prepared classification split, gold labels mapped to the model's label ids.

    Raises:
        UserError: the split has labels the model was not trained on.
    """
    import time

    from lmreason.training.batching import TokenizedSplit, sorted_batches, to_device

    model_labels = label_names_of(session.model)
    unknown = sorted(set(label_names) - set(model_labels))
    if unknown:
        raise UserError(
            f"labels {unknown[:5]} are not among the model's labels {model_labels[:10]}; "
            "evaluate on data with the model's label set"
        )
    to_model = np.array([model_labels.index(name) for name in label_names])
    began = time.perf_counter()
    examples = TokenizedSplit(dataset, task, session.tokenizer.pad_token_id)
    batches = sorted_batches(examples.lengths, session.batch_size)
    labels, logits, loss = task.predict_logits(
        session.model,
        (to_device(examples.collate(b), session.device) for b in batches),
        partial(run_batches, device=session.device, precision=session.precision, workers=batch_workers(session.device)),
    )
    probs = softmax(logits)
    restored = restore_order(batches)
    return SplitPredictions(
        to_model[labels[restored]], probs[restored], loss, time.perf_counter() - began, logits[restored]
    )


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """(N, C) float64 probabilities softmax(logits / T), computed by torch in float32 as the forward pass is
    (so T = 1 gives exactly the probabilities the model's own softmax gives)."""
    import torch

    scaled = torch.from_numpy(np.asarray(logits, dtype=np.float32)) / float(temperature)
    return torch.softmax(scaled, dim=-1).numpy().astype(np.float64)


def classify_texts(
    session: InferenceSession, texts: list[str], pairs: list[str] | None = None, temperature: float = 1.0
) -> np.ndarray:
    """(N, C) class probabilities softmax(logits / temperature) for raw texts (or sentence pairs), in input order.

    Tokenized once (truncated to the session's max_length); each batch padded by the tokenizer. `temperature`
    is a fitted calibration temperature (lmreason/evaluation/calibration.py); 1.0 gives the raw probabilities.
    Every backend (torch, onnx) passes through here, so a temperature applies to all of them alike.
    """
    import torch

    from lmreason.training.batching import sorted_batches

    tokenizer, model = session.tokenizer, session.model
    encoded = tokenizer(texts, pairs, truncation=True, max_length=session.max_length)
    keys = [
        k for k in ("input_ids", "token_type_ids") if k in encoded and k in tokenizer.model_input_names + ["input_ids"]
    ]
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    batches = sorted_batches(lengths, session.batch_size)
    padded = (
        tokenizer.pad(
            {k: [encoded[k][i] for i in batch] for k in keys},
            padding_side="right",
            return_attention_mask=True,
            return_tensors="pt",
        )
        for batch in batches
    )

    def forward(inputs):
        logits = model(**{k: v.to(session.device) for k, v in inputs.items()}).logits.float()
        return torch.softmax(logits / temperature, dim=-1).cpu().numpy()

    probs = np.zeros((len(texts), model.config.num_labels))
    workers = batch_workers(session.device)
    results = run_batches(forward, padded, session.device, session.precision, workers)
    for batch, batch_probs in zip(batches, results, strict=True):  # strict: the runner finishes (its pool shut down)
        probs[batch] = batch_probs
    return probs


def reference_loss(session: InferenceSession, task, dataset) -> tuple[float, int]:
    """(mean loss per completion token, completion tokens) of a prepared task=gen split's references."""
    import torch

    from lmreason.training.batching import TokenizedSplit, sorted_batches, to_device
    from lmreason.training.device import autocast

    examples = TokenizedSplit(dataset, task, session.tokenizer.pad_token_id)
    total, count = 0.0, 0
    with torch.inference_mode(), autocast(session.device, session.precision):
        for indices in sorted_batches(examples.lengths, session.batch_size):
            loss_sum, n, _ = task.token_losses(session.model, to_device(examples.collate(indices), session.device))
            total += float(loss_sum)
            count += n
    return total / max(count, 1), count
