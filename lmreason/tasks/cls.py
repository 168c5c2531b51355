"""Sequence classification: one text (or a pair) -> one of a fixed set of labels."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lmreason.tasks.base import ValidationContext


class ClassificationTask:
    name = "cls"
    validation_metrics = (
        "loss",
        "acc",
        "f1_macro",
        "ece",
    )  # what `evaluate` returns (checked against the monitor early)
    # Columns of a prepared dataset that are model inputs, and their padding values.
    input_columns = {"input_ids": "pad", "token_type_ids": 0}
    label_padding = None  # one label per example: nothing to pad
    gathers_validation = True  # evaluate() gathers predictions across DDP ranks: the trainer shards validation

    def tokenize(self, frame: pd.DataFrame, tokenizer, cfg, label_names: list[str]) -> dict:
        """Token ids (truncated to model.max_length), label ids, kept and untruncated lengths."""
        texts = frame["text"].tolist()
        pairs = frame["text_pair"].tolist() if "text_pair" in frame.columns else None
        encoded = tokenizer(texts, pairs, truncation=True, max_length=cfg.model.max_length)
        # Untruncated lengths, to report how much truncation costs.
        full = tokenizer(texts, pairs, truncation=False, add_special_tokens=True)["input_ids"]
        label_ids = {label: i for i, label in enumerate(label_names)}
        columns = {"input_ids": encoded["input_ids"]}
        if "token_type_ids" in encoded:
            columns["token_type_ids"] = encoded["token_type_ids"]
        columns["labels"] = [label_ids[label] for label in frame["label"]]
        columns["length"] = [len(ids) for ids in encoded["input_ids"]]
        columns["full_length"] = [len(ids) for ids in full]
        return columns

    def build_model(self, cfg, label_names: list[str]):
        from lmreason.models.loading import build_classifier

        return build_classifier(cfg.model, label_names, cfg.cache_dir, cfg.get("regularization"))

    def load_model(self, checkpoint, cfg):
        """The model of a checkpoint dir (weights, config and head), on the CPU."""
        from transformers import AutoModelForSequenceClassification

        # safetensors only: a pytorch_model.bin planted in a run dir is never unpickled
        return AutoModelForSequenceClassification.from_pretrained(
            checkpoint, use_safetensors=True, trust_remote_code=cfg.model.trust_remote_code
        )

    def save_model(self, model, tokenizer, target, trainer_state, meta, config_yaml, cfg) -> None:
        from lmreason.training.checkpoint import save_checkpoint

        save_checkpoint(target, model, tokenizer, trainer_state, meta, config_yaml)

    def forward(self, model, batch: dict):
        """(mean loss, logits (B, C))."""
        import torch.nn.functional as F

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        return F.cross_entropy(logits.float(), batch["labels"]), logits

    def loss_terms(self, batch: dict) -> int:
        """How many terms `forward`'s mean loss averages: the batch's rows."""
        return len(batch["labels"])

    def evaluate(self, model, batches, label_names: list[str], context: ValidationContext | None = None) -> dict:
        """Validation metrics over `batches` (loss, acc, f1_macro, ece)."""
        from lmreason.evaluation.metrics import classification_metrics

        labels, probs, loss = self.predict(model, batches, context.map_batches if context is not None else None)
        if context is not None:  # DDP: this rank predicted its share of the split; metrics need all of it
            labels, probs, loss = context.gather(labels, probs, loss)
        metrics = classification_metrics(labels, probs, label_names, loss=loss)
        return {"loss": metrics["loss"], "acc": metrics["acc"], "f1_macro": metrics["f1_macro"], "ece": metrics["ece"]}

    def predict(self, model, batches, run_batches=None):
        """Gold labels (N,), class probabilities (N, C) and the mean loss, in batch order (`run_batches`:
        as `predict_logits`)."""
        import torch

        labels, logits, loss = self.predict_logits(model, batches, run_batches)
        probs = torch.softmax(torch.from_numpy(logits).float(), dim=-1).numpy().astype(np.float64)
        return labels, probs, loss

    def predict_logits(self, model, batches, run_batches=None):
        """Gold labels (N,), logits (N, C) (float32 values as float64) and the mean loss, in batch order.

        The logits, not the probabilities, are what temperature scaling needs: softmax(logits / T)
        (lmreason/evaluation/calibration.py); log(probs) would lose rows whose probabilities underflow.
        `run_batches(fn, batches)` maps the per-batch forward pass over the batches in batch order
        (evaluation/batch_workers.py: side by side on the CPU's cores); a plain loop by default."""
        import torch
        import torch.nn.functional as F

        def one(batch):
            logits = self.forward(model, batch)[1].float()
            loss = F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            return batch["labels"].cpu(), logits.cpu(), loss

        all_labels, all_logits, total_loss, count = [], [], 0.0, 0
        for labels, logits, loss in (run_batches or map)(one, batches):
            total_loss += loss
            count += len(labels)
            all_logits.append(logits)
            all_labels.append(labels)
        if not all_labels:  # DDP: a rank whose share of a small validation split is empty
            return np.zeros(0, dtype=np.int64), np.zeros((0, model.config.num_labels)), 0.0
        labels = torch.cat(all_labels).numpy()
        logits = torch.cat(all_logits).numpy().astype(np.float64)
        return labels, logits, total_loss / max(count, 1)
