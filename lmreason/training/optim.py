"""Optimizer and learning-rate schedule from the `optimizer`, `scheduler` and `regularization` groups."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from lmreason.errors import UserError


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Decay weight matrices only: biases and normalisation weights are exempt (standard for transformers)."""
    import torch.nn as nn

    no_decay = set()
    for module in model.modules():
        if isinstance(module, (nn.LayerNorm, nn.Embedding)) or "norm" in type(module).__name__.lower():
            if isinstance(module, nn.Embedding):
                continue  # embeddings are weights: decayed, as in BERT's recipe
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, exempt = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (exempt if id(param) in no_decay or name.endswith("bias") else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def build_optimizer(model, opt_cfg: DictConfig, weight_decay: float):
    """AdamW or SGD over the trainable parameters (values checked by `lmreason.validation`).

    Raises:
        UserError: nothing left to train (the regularization group froze every parameter).
    """
    import torch

    groups = parameter_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise UserError("no trainable parameters left: the regularization group freezes everything; freeze less")
    if opt_cfg.name == "adamw":
        # fused: one kernel updates all weights (CPU and CUDA), instead of several passes per tensor
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps, fused=fused)
    if opt_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=opt_cfg.lr, momentum=opt_cfg.momentum, nesterov=opt_cfg.nesterov)
    raise ValueError(
        f"optimizer.name={opt_cfg.name}: no builder (the schema's OptimizerName and this function disagree)"
    )


def warmup_steps(sched_cfg: DictConfig, total_steps: int) -> int:
    """A float below 1 is a fraction of all steps, rounded up, else a count: as transformers'
    `TrainingArguments.get_warmup_steps`."""
    value = sched_cfg.warmup_steps
    return int(math.ceil(value * total_steps)) if value < 1 else int(value)


def build_scheduler(optimizer, sched_cfg: DictConfig, total_steps: int):
    """The schedule from transformers' own functions, so lmreason and Hugging Face `Trainer` agree
    step for step on the same settings (tests/test_validate.py compares them at every step).

    The factor at step s (0-based: the lr of the s-th optimizer step), warmup w, total T:
    warmup `s / w` (the first step trains at lr 0, as in Trainer), then
      linear:   decay to 0 (get_linear_schedule_with_warmup); with min_lr_ratio r > 0, decay to r
                (get_polynomial_decay_schedule_with_warmup, power 1, lr_end = r x lr);
      cosine:   half a cosine down to r (get_cosine_with_min_lr_schedule_with_warmup, min_lr_rate r);
      constant: 1 (get_constant_schedule_with_warmup).
    A LambdaLR: its state_dict checkpoints the step, so resume continues the same curve.
    """
    from transformers import optimization as hf

    warmup = warmup_steps(sched_cfg, total_steps)
    floor = float(sched_cfg.min_lr_ratio)
    if sched_cfg.name == "constant":
        return hf.get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    if sched_cfg.name == "cosine":
        return hf.get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=warmup, num_training_steps=total_steps, min_lr_rate=floor
        )
    if sched_cfg.name == "linear":
        if floor == 0.0:
            return hf.get_linear_schedule_with_warmup(
                optimizer, num_warmup_steps=warmup, num_training_steps=total_steps
            )
        if floor == 1.0:
            return hf.get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)  # decays to the peak: flat
        # the polynomial decay divides by (T - w): a warmup as long as training never decays (the lr after
        # the last step aside), so any T > w gives the same lr to every step that trains
        return hf.get_polynomial_decay_schedule_with_warmup(
            optimizer,
            num_warmup_steps=warmup,
            num_training_steps=max(total_steps, warmup + 1),
            lr_end=floor * optimizer.defaults["lr"],
            power=1.0,
        )
    raise ValueError(
        f"scheduler.name={sched_cfg.name}: no builder (the schema's SchedulerName and this function disagree)"
    )
