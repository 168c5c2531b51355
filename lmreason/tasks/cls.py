"""Sequence classification: one text (or a pair) -> one of a fixed set of labels."""

from __future__ import annotations

import numpy as np
import pandas as pd


class ClassificationTask:
    name = "cls"
    monitor_default = "val/acc"
    validation_metrics = ("loss", "acc", "f1_macro", "ece")  # what `evaluate` returns (checked against the monitor early)
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
        return AutoModelForSequenceClassification.from_pretrained(checkpoint, use_safetensors=True,
                                                                  trust_remote_code=cfg.model.trust_remote_code)

    def save_model(self, model, tokenizer, target, trainer_state, meta, config_yaml, cfg) -> None:
        from lmreason.training.checkpoint import save_checkpoint

        save_checkpoint(target, model, tokenizer, trainer_state, meta, config_yaml)

    def forward(self, model, batch: dict):
        """(mean loss, logits (B, C))."""
        import torch.nn.functional as F

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        return F.cross_entropy(logits.float(), batch["labels"]), logits

    def evaluate(self, model, batches, label_names: list[str], recipe=None) -> dict:
        """Validation metrics over `batches` (loss, acc, f1_macro, ece)."""
        from lmreason.evaluation.metrics import classification_metrics

        labels, probs, loss = self.predict(model, batches)
        if recipe is not None:  # DDP: this rank predicted its share of the split; metrics need all of it
            labels, probs, loss = recipe.dist.gather_predictions(labels, probs, loss)
        metrics = classification_metrics(labels, probs, label_names, loss=loss)
        return {"loss": metrics["loss"], "acc": metrics["acc"], "f1_macro": metrics["f1_macro"], "ece": metrics["ece"]}

    def predict(self, model, batches):
        """Gold labels (N,), class probabilities (N, C) and the mean loss, in batch order."""
        import torch
        import torch.nn.functional as F

        all_labels, all_probs, total_loss, count = [], [], 0.0, 0
        for batch in batches:
            logits = self.forward(model, batch)[1].float()
            loss = F.cross_entropy(logits, batch["labels"], reduction="sum")
            total_loss += loss.item()
            count += len(batch["labels"])
            all_probs.append(torch.softmax(logits, dim=-1).cpu())
            all_labels.append(batch["labels"].cpu())
        if not all_labels:  # DDP: a rank whose share of a small validation split is empty
            return np.zeros(0, dtype=np.int64), np.zeros((0, model.config.num_labels)), 0.0
        labels = torch.cat(all_labels).numpy()
        probs = torch.cat(all_probs).numpy().astype(np.float64)
        return labels, probs, total_loss / max(count, 1)

    # ------------------------------------------------------------------ evaluate command
    gap_keys = ("acc", "f1_macro", "ece", "loss")

    def evaluate_split(self, model, tokenizer, dataset, split, data, cfg, eval_cfg, device, precision, out_dir, slice_columns) -> dict:
        """Full report for one split: metrics, slices, plots, predictions.jsonl and metrics.json in `out_dir`."""
        import json
        import time

        import torch

        from lmreason.errors import UserError
        from lmreason.evaluation.loading import label_names_of
        from lmreason.evaluation.metrics import classification_metrics, reliability_bins, slice_metrics
        from lmreason.evaluation.plots import confusion_figure, reliability_figure, save_figure
        from lmreason.evaluation.report import metrics_table, slices_table
        from lmreason.training.batching import TokenizedSplit, sorted_batches, to_device
        from lmreason.training.device import autocast
        from lmreason.ui import console

        model_labels = label_names_of(model)
        unknown = sorted(set(data.label_names) - set(model_labels))
        if unknown:
            raise UserError(f"split {split}: labels {unknown[:5]} are not among the model's labels {model_labels[:10]}; evaluate on data with the model's label set")
        to_model = np.array([model_labels.index(name) for name in data.label_names])
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        began = time.perf_counter()
        examples = TokenizedSplit(dataset, self, pad_id)
        batches = sorted_batches(examples.lengths, cfg.batch_size)
        with torch.inference_mode(), autocast(device, precision):
            labels, probs, loss = self.predict(model, (to_device(examples.collate(b), device) for b in batches))
        order = np.concatenate(batches)
        restored = np.empty_like(order)
        restored[order] = np.arange(len(order))  # row i of the split sits at restored[i] in batch order
        labels, probs = to_model[labels[restored]], probs[restored]
        metrics = classification_metrics(labels, probs, model_labels, loss=loss)
        # throughput of batching + forward passes + metrics (model loading, plots and files excluded)
        metrics["eval_seconds"] = time.perf_counter() - began
        metrics["samples_per_s"] = len(labels) / metrics["eval_seconds"] if metrics["eval_seconds"] > 0 else None
        metrics["reliability"] = reliability_bins(probs.max(axis=1), probs.argmax(axis=1) == labels)
        metrics["slices"] = {col: slice_metrics(labels, probs, dataset[col], model_labels) for col in slice_columns}
        metrics["split"] = split
        out_dir.mkdir(parents=True, exist_ok=True)
        save_figure(confusion_figure(metrics["confusion"], model_labels, f"{split}: confusion matrix"), out_dir / "confusion_matrix.png")
        save_figure(reliability_figure(metrics["reliability"], metrics["ece"], f"{split}: reliability"), out_dir / "reliability.png")
        with open(out_dir / "predictions.jsonl", "w") as handle:
            predicted = probs.argmax(axis=1)
            texts, meta = dataset["text"], {c: dataset[c] for c in slice_columns}
            for i in range(len(labels)):
                row = {"text": texts[i], "label": model_labels[labels[i]], "predicted": model_labels[predicted[i]],
                       "confidence": float(probs[i, predicted[i]])}
                row.update({c: values[i] for c, values in meta.items()})
                handle.write(json.dumps(row) + "\n")
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
        console.print(metrics_table(metrics, f"{split}: {metrics['n']} examples"))
        for col, slices in metrics["slices"].items():
            console.print(slices_table(slices, col))
        return metrics

    # ------------------------------------------------------------------ infer command
    def infer(self, model, tokenizer, texts, pairs, cfg, device, precision, max_length, saved_cfg) -> list[dict]:
        """Label and class probabilities per input, in input order (batched longest-first)."""
        import torch

        from lmreason.evaluation.loading import label_names_of
        from lmreason.training.batching import sorted_batches
        from lmreason.training.device import autocast

        names = label_names_of(model)
        limit = max_length or min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
        encoded = tokenizer(texts, pairs, truncation=True, max_length=limit)["input_ids"]
        lengths = np.array([len(ids) for ids in encoded])
        has_types = "token_type_ids" in tokenizer.model_input_names
        probs = np.zeros((len(texts), len(names)))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        with torch.inference_mode(), autocast(device, precision):
            for batch in sorted_batches(lengths, cfg.batch_size):
                width = int(lengths[batch].max())
                ids = torch.full((len(batch), width), pad, dtype=torch.long)
                for row, i in enumerate(batch):
                    ids[row, : lengths[i]] = torch.tensor(encoded[i])
                mask = (torch.arange(width)[None, :] < torch.as_tensor(lengths[batch])[:, None]).long()
                inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
                if has_types and pairs is not None:
                    types = tokenizer(
                        [texts[i] for i in batch], [pairs[i] for i in batch], truncation=True, max_length=limit,
                        padding=True, return_tensors="pt")["token_type_ids"]
                    inputs["token_type_ids"] = types.to(device)
                logits = model(**inputs).logits.float()
                probs[batch] = torch.softmax(logits, dim=-1).cpu().numpy()
        results = []
        for i, text in enumerate(texts):
            row = {"text": text}
            if pairs is not None:
                row["text_pair"] = pairs[i]
            best = int(probs[i].argmax())
            row.update({"label": names[best], "confidence": float(probs[i, best]),
                        "probs": {name: float(p) for name, p in zip(names, probs[i])}})
            results.append(row)
        return results

    def render_predictions(self, predictions: list[dict], cfg) -> None:
        from rich.table import Table

        from lmreason.ui import console

        table = Table(title=f"{len(predictions)} prediction(s)", title_justify="left")
        table.add_column("text", overflow="fold", max_width=70)
        table.add_column("label")
        table.add_column("probabilities")
        for row in predictions[:200]:
            ranked = sorted(row["probs"].items(), key=lambda kv: -kv[1])
            if cfg.top_k:
                ranked = ranked[: cfg.top_k]
            table.add_row(row["text"], row["label"], ", ".join(f"{k} {v:.3f}" for k, v in ranked[:6]))
        console.print(table)
        if len(predictions) > 200:
            console.print(f"... {len(predictions) - 200} more; use output=<file.jsonl> for all of them")
