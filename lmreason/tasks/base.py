"""The task interface, and the narrow context a task's validation gets from the training loop.

A task supplies four things and nothing else:

- ``tokenize(frame, tokenizer, cfg, label_names) -> columns``: a split's model inputs
  (``input_ids``, ``labels``, ``length``, ``full_length``; ``cfg`` is read for
  ``model.max_length`` and the task's own settings);
- ``build_model(cfg, label_names)``, ``load_model(checkpoint, cfg)``,
  ``save_model(model, tokenizer, target, trainer_state, meta, config_yaml, cfg)``;
- ``forward(model, batch) -> (mean loss, logits)``, and optionally ``loss_terms(batch) -> int``, how
  many terms that mean averages (training then splits micro-batches into shards computed side by side
  on the CPU's threads: lmreason/training/shards.py);
- ``evaluate(model, batches, label_names, context) -> {metric: value}`` for validation,
  where ``context`` is a ``ValidationContext`` (never the training recipe).

plus the class attributes ``name``, ``input_columns`` (prepared columns that are model
inputs, with their padding value), ``label_padding`` and ``validation_metrics``.
What the ``evaluate`` and ``infer`` commands do with a model lives in
``lmreason.evaluation``, not here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


def _no_gather(labels, probs, loss):
    return labels, probs, loss


@dataclass
class ValidationContext:
    """What one validation may know about the run that asks for it.

    step: optimisation steps done; is_last: the run's final validation;
    number: this validation's 1-based count in the run (survives a resume);
    dataset: the prepared validation split (rows with text and metadata columns);
    generate: ``(model, prompt_ids) -> texts`` with the run's tokenizer, device,
    precision and generation settings (task=gen samples answers with it);
    gather: ``(labels, probs, loss) -> the same over every DDP rank`` (identity in one process);
    map_batches: ``(fn, batches) -> fn(batch) for each batch, in batch order``, computed side by side
    on the CPU's cores (lmreason/evaluation/batch_workers.py), each under inference mode and the run's
    autocast; the built-in ``map`` where none is given.
    """

    step: int = 0
    is_last: bool = False
    number: int = 1
    dataset: Any = None
    generate: Callable | None = None
    gather: Callable = field(default=_no_gather)
    map_batches: Callable = map
