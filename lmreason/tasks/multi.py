"""task=multi: several classification tasks on one shared encoder, one head per task.

Data: each entry of `task.tasks` is prepared (and cached) as its own task=cls data, then the splits
are stacked, each row tagged with its task (`head_id`). Training batches hold one task each, planned
by `plan_batches` (lmreason.tasks.multi_sampling). Validation reports `<task>/<metric>` for every task
and their mean as `<metric>` (`val/acc` = the mean of the tasks' accuracies).

Model: one `AutoModelForSequenceClassification` per task whose encoder (`base_model`) is the same
module: each head computes exactly what a plain classifier with those weights computes. Checkpoint:
`heads/<task>/` is a complete plain model dir per head (config.json, model.safetensors, tokenizer,
and a task=cls config.yaml: `evaluate checkpoint=.../heads/<task>` and `infer` take it as it is);
the trainer state, lmreason.json and the run's config.yaml sit beside, as for any checkpoint.
The encoder is thus stored once per head (the price of heads that plain transformers loads).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from lmreason.errors import UserError
from lmreason.tasks.base import ValidationContext
from lmreason.tasks.cls import ClassificationTask
from lmreason.tasks.multi_config import MONITORED, resolve_tasks

HEADS_DIR = "heads"
CLS_TASK = {"name": "cls", "monitor": "val/acc", "monitor_mode": "max"}  # conf/task/cls.yaml: a head's own task


class MultiTask:
    name = "multi"
    input_columns = {**ClassificationTask.input_columns, "head_id": 0}  # head_id: [task index], (B, 1) batched
    label_padding = None
    gathers_validation = False  # one process only (see lmreason.validation)

    def __init__(self, settings: DictConfig):
        self.settings = settings
        self.entries = resolve_tasks(settings)
        self.names = [e.name for e in self.entries]
        self.validation_metrics = (*MONITORED, *(f"{n}/{m}" for n in self.names for m in MONITORED))

    # ------------------------------------------------------------------ data
    def head_config(self, cfg: DictConfig, name: str) -> DictConfig:
        """`cfg` as the task=cls run of one head: its data, the cls task settings."""
        entry = self.entries[self.names.index(name)]
        head = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        head.task = dict(CLS_TASK)
        head.data = OmegaConf.to_container(entry.data, resolve=True)
        if head.get("train") is not None:
            head.train.early_stopping.monitor, head.train.early_stopping.mode = "val/acc", "max"
        return head

    def prepare_data(self, cfg: DictConfig, tokenizer):
        """Each task's data prepared as task=cls (its own cache), stacked per split with a head_id column."""
        import datasets

        from lmreason.data.prepare import PreparedData, prepare_data

        cls = ClassificationTask()
        parts = {name: prepare_data(self.head_config(cfg, name), cls, tokenizer) for name in self.names}
        for name, part in parts.items():
            if "validation" not in part.splits:
                raise UserError(f"task.tasks.{name}: {part.summary.get('source')} has no validation split; add one")
        split_names = [s for s in parts[self.names[0]].splits if all(s in p.splits for p in parts.values())]
        keep = [*self.input_columns, "labels", "length", "text"]
        splits = {}
        for split in split_names:
            columns: dict[str, list] = {}
            for index, name in enumerate(self.names):
                dataset = parts[name].splits[split]
                for column in keep:
                    if column == "head_id":
                        columns.setdefault(column, []).extend([[index]] * len(dataset))
                    elif column in dataset.column_names:
                        columns.setdefault(column, []).extend(dataset[column])
                columns.setdefault("task", []).extend([name] * len(dataset))
            splits[split] = datasets.Dataset.from_dict(columns)
        summary = {
            "source": "multi-task: " + ", ".join(f"{n} ({p.summary.get('source')})" for n, p in parts.items()),
            "task": "multi",
            "max_length": cfg.model.max_length,
            "model": cfg.model.name_or_path,
            "splits": {f"{n}/{s}": info for n, p in parts.items() for s, info in p.summary["splits"].items()},
            "tasks": {n: p.summary for n, p in parts.items()},
        }
        first = parts[self.names[0]]
        return PreparedData(
            splits=splits,
            label_names={n: p.label_names for n, p in parts.items()},  # per task: the trainer passes it through
            summary=summary,
            path=first.path.parent,
            reused=all(p.reused for p in parts.values()),
        )

    def plan_batches(self, dataset, batch_size: int, seed: int, epoch: int, group_by_length: bool) -> list:
        """One epoch's index batches over the stacked training split; each batch one task's."""
        from lmreason.tasks.multi_sampling import multitask_batches

        task_of_row = np.asarray(dataset["head_id"])[:, 0]
        rule = (str(self.settings.sampling), float(self.settings.temperature))
        return multitask_batches(task_of_row, dataset["length"], batch_size, seed, epoch, rule, group_by_length)

    # ------------------------------------------------------------------ model
    def build_model(self, cfg, label_names: dict):
        from lmreason.models.loading import build_classifier

        heads = {
            name: build_classifier(cfg.model, label_names[name], cfg.cache_dir, cfg.get("regularization"))
            for name in self.names
        }
        return MultiTaskForSequenceClassification.sharing_one_encoder(heads)

    def load_model(self, checkpoint, cfg):
        """Every head of a checkpoint dir, their encoders made one (they are equal copies), on the CPU."""
        heads = load_heads(Path(checkpoint), cfg.model.trust_remote_code)
        if list(heads) != self.names:
            raise UserError(f"{checkpoint}: its heads are {', '.join(heads)}, task.tasks names {', '.join(self.names)}")
        return MultiTaskForSequenceClassification.sharing_one_encoder(heads)

    def save_model(self, model, tokenizer, target, trainer_state, meta, config_yaml, cfg) -> None:
        from lmreason.training.checkpoint import save_checkpoint

        extras = {}
        for name in self.names:
            head_meta = {**meta, "task": "cls", "label_names": meta["label_names"][name], "multitask_head": name}
            extras[name] = (OmegaConf.to_yaml(self.head_config(cfg, name), resolve=True), head_meta)
        save_checkpoint(target, _HeadsWriter(model, tokenizer, extras), tokenizer, trainer_state, meta, config_yaml)

    # ------------------------------------------------------------------ loss and validation
    def forward(self, model, batch: dict):
        """(mean loss, logits (B, C_task)) of a single-task batch."""
        import torch.nn.functional as F

        head = batch["head_id"][:, 0]
        index = int(head[0])  # a device sync on CUDA: the one value that picks the head
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "head_id")}
        logits = model(head=index, **inputs).logits
        return F.cross_entropy(logits.float(), batch["labels"]), logits

    def loss_terms(self, batch: dict) -> int:
        """How many terms `forward`'s mean loss averages: the batch's rows."""
        return len(batch["labels"])

    def evaluate(self, model, batches, label_names: dict, context: ValidationContext | None = None) -> dict:
        """Per task loss, acc, f1_macro, ece (`<task>/<metric>`) and their means (`<metric>`)."""
        import torch
        import torch.nn.functional as F

        from lmreason.evaluation.metrics import classification_metrics

        def per_head(batch):  # validation batches mix tasks: each task's rows go through its head
            heads, out = batch["head_id"][:, 0], []
            for index in heads.unique().tolist():
                rows = heads == index
                sub = {k: v[rows] for k, v in batch.items()}
                logits = self.forward(model, sub)[1].float()
                loss = F.cross_entropy(logits, sub["labels"], reduction="sum").item()
                out.append((index, sub["labels"].cpu(), torch.softmax(logits, dim=-1).cpu(), loss))
            return out

        gathered = {name: ([], [], 0.0) for name in self.names}
        for results in (context.map_batches if context is not None else map)(per_head, batches):
            for index, batch_labels, batch_probs, batch_loss in results:
                labels, probs, loss = gathered[self.names[index]]
                labels.append(batch_labels)
                probs.append(batch_probs)
                gathered[self.names[index]] = (labels, probs, loss + batch_loss)
        metrics = {}
        for name, (labels, probs, loss) in gathered.items():
            y = torch.cat(labels).numpy() if labels else np.zeros(0, dtype=np.int64)
            p = torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros((0, len(label_names[name])))
            own = classification_metrics(y, p, label_names[name], loss=loss / max(len(y), 1))
            metrics.update({f"{name}/{m}": own[m] for m in MONITORED})
        for m in MONITORED:  # the mean over tasks (each task weighs the same, whatever its size)
            metrics[m] = float(np.mean([metrics[f"{name}/{m}"] for name in self.names]))
        return {m: metrics[m] for m in MONITORED} | {k: v for k, v in metrics.items() if "/" in k}


class _HeadsWriter:
    """What `save_checkpoint` calls `save_pretrained` on: writes heads/<task>/ for every head."""

    def __init__(self, model, tokenizer, extras: dict):
        self.model, self.tokenizer, self.extras = model, tokenizer, extras

    def save_pretrained(self, path, safe_serialization: bool = True) -> None:
        for name, head in zip(self.model.names, self.model.heads):
            target = Path(path) / HEADS_DIR / name
            head.save_pretrained(target, safe_serialization=safe_serialization)
            self.tokenizer.save_pretrained(target)
            config_yaml, meta = self.extras[name]
            (target / "config.yaml").write_text(config_yaml)
            (target / "lmreason.json").write_text(json.dumps(meta, indent=2, default=float))


def head_names(checkpoint: Path) -> list[str] | None:
    """The heads of a multi-task checkpoint dir, in training order (None: not a multi-task checkpoint)."""
    meta_path = Path(checkpoint) / "lmreason.json"
    if not (Path(checkpoint) / HEADS_DIR).is_dir() or not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    return list(meta["label_names"]) if meta.get("task") == "multi" else None


def load_heads(checkpoint: Path, trust_remote_code: bool = False) -> dict:
    from transformers import AutoModelForSequenceClassification

    names = head_names(checkpoint)
    if names is None:
        raise UserError(f"{checkpoint}: not a multi-task checkpoint (no heads/ and lmreason.json with task multi)")
    try:  # safetensors only: a pytorch_model.bin planted in a run dir is never unpickled
        return {
            name: AutoModelForSequenceClassification.from_pretrained(
                checkpoint / HEADS_DIR / name, use_safetensors=True, trust_remote_code=trust_remote_code
            )
            for name in names
        }
    except (OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(
            f"{checkpoint}: cannot load its heads ({first}); lmreason loads safetensors weights only"
        ) from None


class MultiTaskForSequenceClassification(nn.Module):
    """Heads (plain sequence classifiers) that share one encoder module; `forward(head=i, **inputs)`.

    (Named like a transformers classifier: the fast paths' [CLS]-only last layer applies, every head
    reading the first position only, and is checked against the full layer as for any classifier.)"""

    def __init__(self, heads: dict):
        super().__init__()
        self.names = list(heads)
        self.heads = nn.ModuleList(heads.values())  # a list: task names need not be valid attribute names

    @classmethod
    def sharing_one_encoder(cls, heads: dict) -> MultiTaskForSequenceClassification:
        """The first head's encoder becomes every head's (the others' own encoders are dropped)."""
        first = next(iter(heads.values()))
        for head in list(heads.values())[1:]:
            setattr(head, head.base_model_prefix, first.base_model)
        return cls(heads)

    @property
    def config(self):
        """The shared encoder's config (the first head's): what the fast paths read (model_type, vocab size)."""
        return self.heads[0].config

    def set_attn_implementation(self, implementation: str) -> None:
        """The shared encoder's attention (the first head owns it and its config): what `fast_dropout` swaps
        for its own masks, so that batch shards apply to a multi-task run too."""
        self.heads[0].set_attn_implementation(implementation)

    def __getattr__(self, name: str):
        """`model.bert` (the encoder's own prefix) is the shared encoder, as on a plain classifier."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            first = super().__getattr__("heads")[0]
            if name == first.base_model_prefix:
                return first.base_model
            raise

    @property
    def base_model(self):
        return self.heads[0].base_model

    def get_input_embeddings(self):
        return self.heads[0].get_input_embeddings()

    def forward(self, head: int | str = 0, **inputs):
        index = self.names.index(head) if isinstance(head, str) else head
        return self.heads[index](**inputs)
