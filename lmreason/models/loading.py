"""Build tokenizers and models from the `model` config group.

`name_or_path` may be a packaged name (offline), a local directory or a hub id.
Dropout overrides and layer freezing from the `regularization` group are applied
here, so every command builds a model the same way.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from lmreason.errors import UserError
from lmreason.models.packaged import hub_error_message, resolve_model_path

log = logging.getLogger(__name__)

# Config field names that hold dropout probabilities, per family.
HIDDEN_DROPOUT_KEYS = ("hidden_dropout_prob", "hidden_dropout", "resid_pdrop", "embd_pdrop", "dropout")
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")


def load_tokenizer(model_cfg: DictConfig, cache_dir: str | None = None):
    from transformers import AutoTokenizer

    name = model_cfg.tokenizer or model_cfg.name_or_path
    path = resolve_model_path(name, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(hub_error_message(name, exc)) from None
    if tokenizer.pad_token is None:  # decoders often ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(model_cfg: DictConfig, cache_dir: str | None, reg_cfg: DictConfig | None = None, **fields):
    from transformers import AutoConfig

    path = resolve_model_path(model_cfg.name_or_path, cache_dir)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code, **fields)
    except (OSError, ValueError) as exc:
        raise UserError(hub_error_message(model_cfg.name_or_path, exc)) from None
    for key, value in OmegaConf.to_container(model_cfg.config_overrides, resolve=True).items():
        if not hasattr(config, key):
            raise UserError(
                f"model.config_overrides.{key}: {type(config).__name__} has no field '{key}'; check the name"
            )
        setattr(config, key, value)
    if reg_cfg is not None:
        _override_dropout(config, HIDDEN_DROPOUT_KEYS, reg_cfg.hidden_dropout, "regularization.hidden_dropout")
        _override_dropout(config, ATTENTION_DROPOUT_KEYS, reg_cfg.attention_dropout, "regularization.attention_dropout")
    return path, config


def _override_dropout(config, keys, value, key_name) -> None:
    if value is None:  # the range is checked by lmreason.validation
        return
    present = [k for k in keys if hasattr(config, k)]
    if not present:
        raise UserError(f"{key_name}: {type(config).__name__} has no dropout field to override; leave it null")
    for k in present:
        setattr(config, k, value)


def build_classifier(
    model_cfg: DictConfig, label_names: list[str], cache_dir: str | None, reg_cfg: DictConfig | None = None
):
    """A sequence-classification model with a fresh head sized to `label_names`."""
    from transformers import AutoModelForSequenceClassification

    id2label = dict(enumerate(label_names))
    path, config = load_config(
        model_cfg,
        cache_dir,
        reg_cfg,
        num_labels=len(label_names),
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
    )
    if model_cfg.from_scratch:
        model = AutoModelForSequenceClassification.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    else:
        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                path, config=config, trust_remote_code=model_cfg.trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise UserError(hub_error_message(model_cfg.name_or_path, exc)) from None
    if model.config.pad_token_id is None and config.eos_token_id is not None:
        model.config.pad_token_id = config.eos_token_id
    return model


def build_causal_lm(model_cfg: DictConfig, cache_dir: str | None, reg_cfg: DictConfig | None = None):
    """A causal language model (decoder) for task=gen."""
    from transformers import AutoModelForCausalLM

    path, config = load_config(model_cfg, cache_dir, reg_cfg)
    if model_cfg.from_scratch:
        return AutoModelForCausalLM.from_config(config, trust_remote_code=model_cfg.trust_remote_code)
    try:
        return AutoModelForCausalLM.from_pretrained(path, config=config, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(hub_error_message(model_cfg.name_or_path, exc)) from None
