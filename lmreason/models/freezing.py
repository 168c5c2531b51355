"""Layer freezing from the `regularization` group: embeddings, the first N layers, or all but the head."""

from __future__ import annotations

from omegaconf import DictConfig

from lmreason.errors import UserError


def transformer_layers(model):
    """The model's stack of transformer blocks (the longest ModuleList inside the backbone)."""
    import torch.nn as nn

    backbone = model.base_model
    lists = [m for m in backbone.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise UserError(f"{type(model).__name__}: cannot find its transformer layers to freeze; set regularization.freeze_layers=0")
    return max(lists, key=len)


def apply_freezing(model, reg_cfg: DictConfig) -> dict[str, int]:
    """Freeze what `reg_cfg` asks for; returns trainable and frozen parameter counts.

    Raises:
        UserError: more layers to freeze than the model has, or a negative count.
    """
    if reg_cfg.freeze_all_but_head:
        for param in model.base_model.parameters():
            param.requires_grad_(False)
    if reg_cfg.freeze_embeddings:
        for param in model.get_input_embeddings().parameters():
            param.requires_grad_(False)
        embeddings = getattr(model.base_model, "embeddings", None)  # BERT: positions, token types, LayerNorm too
        if embeddings is not None:
            for param in embeddings.parameters():
                param.requires_grad_(False)
    if reg_cfg.freeze_layers:
        layers = transformer_layers(model)
        if not 0 < reg_cfg.freeze_layers <= len(layers):
            raise UserError(
                f"regularization.freeze_layers={reg_cfg.freeze_layers}: the model has {len(layers)} layers; "
                f"use 0..{len(layers)} (or freeze_all_but_head=true)"
            )
        for layer in list(layers)[: reg_cfg.freeze_layers]:
            for param in layer.parameters():
                param.requires_grad_(False)
    return parameter_counts(model)


def parameter_counts(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}
