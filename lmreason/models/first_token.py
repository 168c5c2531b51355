"""Classification needs the last layer's output at the first token only: compute only that.

A BERT-style sequence classifier reads `last_hidden_state[:, 0]` (the [CLS] token) and
drops every other position of the last encoder layer. The last layer still needs keys
and values of all positions, but its query, attention output, feed-forward and layer
norms are wanted for position 0 alone. Computing them for the first token only saves
about (L-1)/L of the encoder's work: ~14% fewer FLOPs for MiniLM's 6 layers, in
training, evaluation and inference alike.

What differs from the unpatched model: the last layer computes position 0 only, so
`last_hidden_state` (and that layer's hidden state / attentions, if asked for) is (B, 1, d)
instead of (B, T, d). The logits and every gradient are the same arithmetic for position 0;
they may differ in the last bits where a kernel sums in another order for a (B, 1, d) input.

Applied only where it is known to hold (a BERT/RoBERTa-family `*ForSequenceClassification`
whose head reads position 0, no decoder, no cross-attention), and checked once on a small
padded batch against the unmodified model (logits within rtol 1e-3, atol 1e-4): otherwise it
is undone. The weights and checkpoints are untouched. `lmreason.models.fast_paths` applies it.
"""

from __future__ import annotations

import types

# model_type -> attribute holding the encoder whose last layer is trimmed
SUPPORTED = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta"}
MARK = "_lmreason_first_token_only"


def _first_token_layer_forward(self, hidden_states, attention_mask=None, *args, **kwargs):
    """A BertLayer/RobertaLayer forward whose output keeps position 0 only: (B, T, d) -> (B, 1, d)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    attention = self.attention.self
    batch, length, _ = hidden_states.shape
    first = hidden_states[:, :1]  # (B, 1, d)
    heads = (-1, attention.attention_head_size)
    query = attention.query(first).view(batch, 1, *heads).transpose(1, 2)  # (B, H, 1, dh)
    key = attention.key(hidden_states).view(batch, length, *heads).transpose(1, 2)  # (B, H, T, dh)
    value = attention.value(hidden_states).view(batch, length, *heads).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4:
        attention_mask = attention_mask[:, :, :1]  # the first query's row: (B, 1|H, 1, T)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation, eager_attention_forward)
    context, _ = attend(
        attention,
        query,
        key,
        value,
        attention_mask,
        dropout=attention.dropout.p if attention.training else 0.0,
        scaling=attention.scaling,
    )
    attended = self.attention.output(context.reshape(batch, 1, -1).contiguous(), first)  # (B, 1, d)
    return self.feed_forward_chunk(attended)


def first_token_unsupported(model) -> str | None:
    """Why the trim does not apply to `model` (None: it applies, subject to `trim_checked`)."""
    config = getattr(model, "config", None)
    if SUPPORTED.get(getattr(config, "model_type", None)) is None:
        return f"model_type {getattr(config, 'model_type', None)!r} is not BERT/RoBERTa-family"
    if not type(model).__name__.endswith("ForSequenceClassification"):
        return f"{type(model).__name__} is not a sequence classifier (every position is wanted)"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "a decoder or cross-attention model"
    last = _last_layer(model)
    if last is None:
        return "no encoder layers found where BERT keeps them"
    if not all(hasattr(last, name) for name in ("attention", "feed_forward_chunk")):
        return f"{type(last).__name__} lacks attention/feed_forward_chunk (transformers changed the layer)"
    return None


def first_token_only(model) -> bool:
    """Trim the last encoder layer of `model` to the first position, in place; True when applied.

    False (model unchanged) where it does not apply or where its check against the full layer failed.
    """
    if getattr(model, MARK, False):
        return True
    return first_token_unsupported(model) is None and trim_checked(model) is None


def trim_checked(model) -> str | None:
    """Trim the last layer, check it against the full layer; None when kept, else what differed (undone)."""
    if getattr(model, MARK, False):
        return None
    problem = _same_logits(model, _last_layer(model))
    if problem is None:
        setattr(model, MARK, True)
    return problem


def _last_layer(model):
    encoder_attr = SUPPORTED.get(getattr(getattr(model, "config", None), "model_type", None))
    layers = getattr(getattr(getattr(model, encoder_attr or "", None), "encoder", None), "layer", None)
    return layers[-1] if layers else None


def _same_logits(model, last) -> str | None:
    """Patch `last`, compare logits with the full layer on a padded batch, keep the patch only if equal.

    Returns None when equal, else what went wrong (the patch is then removed)."""
    import torch

    param = next(model.parameters())
    vocab = int(getattr(model.config, "vocab_size", 100))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(min(5, vocab - 1), vocab, (2, 7), generator=generator).to(param.device)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # one padded row: the mask path is checked too
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=mask).logits.float()
            last.forward = types.MethodType(_first_token_layer_forward, last)
            trimmed = model(input_ids=ids, attention_mask=mask).logits.float()
        same = bool(torch.allclose(full, trimmed, rtol=1e-3, atol=1e-4))
        problem = None if same else f"logits differ from the full layer's by {(full - trimmed).abs().max().item():.2g}"
    except Exception as exc:  # an architecture or a transformers version this does not understand: keep the full layer
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    finally:
        model.train(was_training)
    if problem is not None:
        last.__dict__.pop("forward", None)
    return problem
