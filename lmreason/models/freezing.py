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
        raise UserError(
            f"{type(model).__name__}: cannot find its transformer layers to freeze; set regularization.freeze_layers=0"
        )
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
        check_freeze_layers(reg_cfg.freeze_layers, len(layers))
        for layer in list(layers)[: reg_cfg.freeze_layers]:
            for param in layer.parameters():
                param.requires_grad_(False)
    return parameter_counts(model)


def check_freeze_layers(freeze_layers: int, model_layers: int | None) -> None:
    """Raises UserError unless 0 <= freeze_layers <= model_layers (an unknown count allows any)."""
    if freeze_layers < 0 or (model_layers is not None and freeze_layers > model_layers):
        known = (
            f"the model has {model_layers} layers; use 0..{model_layers}"
            if model_layers is not None
            else "use 0 or more"
        )
        raise UserError(f"regularization.freeze_layers={freeze_layers}: {known} (or freeze_all_but_head=true)")


def parameter_counts(model) -> dict[str, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable": trainable, "frozen": total - trainable, "total": total}
