"""Dropout on the CPU with a ~4x cheaper random mask.

On the CPU, torch draws a dropout mask one float at a time (`bernoulli_`): for MiniLM at
batch 32 that was ~11% of a training step (torch.profiler; 20 masks per step, ~1.5 ms each). Here a mask
element is 16 random bits compared with a threshold: 64-bit draws cut into four 16-bit
lanes, a quarter of the generator calls, then one comparison. Kept elements are scaled by
1 / (1 - p), as in `torch.nn.functional.dropout`.

What differs from torch's dropout: p is quantised to 1/65536 -- an element is dropped with
probability round(p * 65536) / 65536 (p=0.1 -> 0.10000610), so a p below 1/131072 drops
nothing, while the scale stays 1 / (1 - p) with the p asked for; and the masks are drawn from
torch's default generator in another way, so a seeded run draws other masks than with torch's
dropout (as reproducible: seeded, and resumed from the saved RNG state). In training mode on
the CPU the encoder's attention is computed by `attention_with_fast_dropout` (matmul, softmax,
this dropout, matmul) instead of SDPA's fused kernel, so its output may differ from SDPA's in
the last bits. Evaluation, p=0 and CUDA are unchanged: torch's / transformers' own code.

`use_fast_dropout(model)` swaps the model's `nn.Dropout` modules and, for encoders whose
attention probabilities are dropped out, the attention function (SDPA otherwise); it does
nothing on CUDA, where torch's fused dropout is already cheap. Weights, state dicts and saved
configs are unchanged. `check_fast_dropout` compares it with the unpatched computation and
`undo_fast_dropout` reverts it (`lmreason.models.fast_paths` applies, checks and reports it).
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

ATTENTION = "lmreason_sdpa_fast_dropout"
LANES = 4  # 16-bit lanes per 64-bit draw
_thread = threading.local()  # .generator: this thread's mask generator (mask_generator), else torch's default


@contextlib.contextmanager
def mask_generator(generator: torch.Generator):
    """Masks drawn in this thread, for the span, come from `generator` instead of torch's default one.

    Batch shards computed side by side (lmreason/training/shards.py) each draw from a generator of
    their own, seeded in a fixed order: the masks do not depend on which thread draws first."""
    before = getattr(_thread, "generator", None)
    _thread.generator = generator
    try:
        yield
    finally:
        _thread.generator = before


def keep_mask(shape, p: float, device=None) -> torch.Tensor:
    """A bool tensor of `shape`: True with probability 1 - p (quantised to 1/65536)."""
    numel = 1
    for size in shape:
        numel *= size
    generator = getattr(_thread, "generator", None)
    bits = torch.empty((numel + LANES - 1) // LANES, dtype=torch.int64, device=device).random_(
        -(2**63), None, generator=generator
    )
    threshold = -32768 + round(p * 65536)  # int16 lanes are uniform on [-32768, 32767]
    return (bits.view(torch.int16)[:numel] >= threshold).view(shape)


class _MaskAndScale(torch.autograd.Function):
    """y = x * mask with mask = keep * scale (one float tensor, also the backward's multiplier)."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        mask = keep.to(x.dtype).mul_(scale)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`F.dropout(x, p, training)` with the cheaper mask on the CPU."""
    if not training or p == 0.0:
        return x
    if p >= 1.0 or x.device.type != "cpu":
        return F.dropout(x, p, training)
    return _MaskAndScale.apply(x, keep_mask(x.shape, p, x.device), 1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    """An `nn.Dropout` drawing its mask with `keep_mask` (same `p`, same `state_dict`)."""

    def forward(self, x):
        return fast_dropout(x, self.p, self.training)


def attention_with_fast_dropout(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Bidirectional attention whose probabilities are dropped out with `fast_dropout` in training.

    Without dropout to apply (evaluation, p=0, CUDA, causal models) it is transformers' SDPA attention.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not (module.training and dropout > 0 and query.device.type == "cpu") or getattr(module, "is_causal", False):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:  # SDPA's masks: bool (True = attend) or additive float
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = fast_dropout(F.softmax(scores, dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, attention_with_fast_dropout)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def fast_dropout_unsupported(model: nn.Module, device) -> str | None:
    """Why `use_fast_dropout` would change nothing for `model` on `device` (None: it applies)."""
    if torch.device(device).type != "cpu":
        return "CPU only (torch's fused dropout is already cheap off the CPU)"
    if not any(type(module) is nn.Dropout for module in model.modules()):
        return "the model has no nn.Dropout modules"
    return None


def attention_dropout(config) -> float:
    """The attention probabilities' dropout p a transformers config sets (BERT's or Llama's name for it), 0 if none."""
    return max((getattr(config, name, 0.0) or 0.0) for name in ("attention_probs_dropout_prob", "attention_dropout"))


def use_fast_dropout(model: nn.Module, device: torch.device) -> int:
    """Swap `model`'s dropout for the cheaper CPU mask, in place; the number of modules swapped."""
    if torch.device(device).type != "cpu":
        return 0
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            swapped += 1
    config = getattr(model, "config", None)
    attention_p = attention_dropout(config)
    if (
        config is not None
        and attention_p > 0
        and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
        and not getattr(config, "is_decoder", False)
        and hasattr(model, "set_attn_implementation")
    ):
        _register_attention()
        model._lmreason_attn_before = config._attn_implementation  # for `undo_fast_dropout`
        model.set_attn_implementation(ATTENTION)
    return swapped


def undo_fast_dropout(model: nn.Module) -> None:
    """Revert `use_fast_dropout`: torch's `nn.Dropout` and the attention implementation the model had."""
    for module in model.modules():
        if type(module) is FastDropout:
            module.__class__ = nn.Dropout
    before = model.__dict__.pop("_lmreason_attn_before", None)
    if before is not None and getattr(model.config, "_attn_implementation", None) == ATTENTION:
        model.set_attn_implementation(before)


def check_fast_dropout(model: nn.Module) -> str | None:
    """Compare the swapped-in dropout with the unpatched computation; None when it agrees, else what differed.

    Checks (on the CPU, tiny tensors, torch's RNG state restored afterwards): the keep rate of a seeded
    64 x 1024 mask at p=0.1 is 0.9 within 0.01; dropped-out values are 0 or x / (1 - p) and the gradient is
    the same mask; and, if the attention function was swapped, its training path with a mask that keeps
    everything (p = 1e-6 quantises to 0) equals transformers' SDPA attention to 1e-5.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rate = keep_mask((64, 1024), 0.1).float().mean().item()
        if abs(rate - 0.9) > 0.01:
            return f"keep_mask kept {rate:.4f} of elements at p=0.1 (expected 0.9)"
        x = torch.ones(4096, requires_grad=True)
        y = fast_dropout(x, 0.25)
        y.sum().backward()
        if not (torch.all((y == 0) | torch.isclose(y, torch.tensor(4 / 3))) and torch.equal(x.grad, y.detach())):
            return "fast_dropout's values or gradient are not 0 or x / (1 - p)"
        if getattr(getattr(model, "config", None), "_attn_implementation", None) == ATTENTION:
            from transformers.integrations.sdpa_attention import sdpa_attention_forward

            module = nn.Module()  # the attention functions read only `training` and `is_causal`
            module.is_causal = False
            q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
            padding = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None, :]
            ours, _ = attention_with_fast_dropout(module, q, k, v, padding, scaling=0.3, dropout=1e-6)
            theirs, _ = sdpa_attention_forward(module, q, k, v, padding, dropout=0.0, scaling=0.3)
            if not torch.allclose(ours, theirs, atol=1e-5):
                return f"the training attention differs from SDPA's by {(ours - theirs).abs().max().item():.2g}"
    return None
