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


OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("linear", "cosine", "constant")


def check_optimization_config(opt_cfg: DictConfig, sched_cfg: DictConfig, reg_cfg: DictConfig) -> None:
    """The checks of `build_optimizer`/`build_scheduler` that need no model: run before any work starts."""
    if opt_cfg.name not in OPTIMIZERS:
        raise UserError(f"optimizer.name={opt_cfg.name} is unknown; use optimizer=adamw or optimizer=sgd")
    if opt_cfg.lr <= 0:
        raise UserError(f"optimizer.lr={opt_cfg.lr}: the learning rate must be positive")
    if reg_cfg.weight_decay < 0:
        raise UserError(f"regularization.weight_decay={reg_cfg.weight_decay}: must be >= 0")
    if sched_cfg.name not in SCHEDULES:
        raise UserError(f"scheduler.name={sched_cfg.name} is unknown; use linear, cosine or constant")
    warmup_steps(sched_cfg, 1)


def build_optimizer(model, opt_cfg: DictConfig, weight_decay: float):
    import torch

    if opt_cfg.lr <= 0:
        raise UserError(f"optimizer.lr={opt_cfg.lr}: the learning rate must be positive")
    if weight_decay < 0:
        raise UserError(f"regularization.weight_decay={weight_decay}: must be >= 0")
    groups = parameter_groups(model, weight_decay)
    if not any(g["params"] for g in groups):
        raise UserError("no trainable parameters left: the regularization group freezes everything; freeze less")
    if opt_cfg.name == "adamw":
        # fused: one kernel updates all weights (CPU and CUDA), instead of several passes per tensor
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for g in groups for p in g["params"])
        return torch.optim.AdamW(groups, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps, fused=fused)
    if opt_cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=opt_cfg.lr, momentum=opt_cfg.momentum, nesterov=opt_cfg.nesterov)
    raise UserError(f"optimizer.name={opt_cfg.name} is unknown; use optimizer=adamw or optimizer=sgd")


def warmup_steps(sched_cfg: DictConfig, total_steps: int) -> int:
    """A float below 1 is a fraction of all steps (as transformers 5's warmup_steps), else a count."""
    value = sched_cfg.warmup_steps
    if value < 0:
        raise UserError(f"scheduler.warmup_steps={value}: must be >= 0 (a fraction < 1 or a step count)")
    return int(math.ceil(value * total_steps)) if value < 1 else int(value)


def build_scheduler(optimizer, sched_cfg: DictConfig, total_steps: int):
    import torch

    warmup = warmup_steps(sched_cfg, total_steps)
    floor = sched_cfg.min_lr_ratio
    if sched_cfg.name not in ("linear", "cosine", "constant"):
        raise UserError(f"scheduler.name={sched_cfg.name} is unknown; use linear, cosine or constant")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if sched_cfg.name == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if sched_cfg.name == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
