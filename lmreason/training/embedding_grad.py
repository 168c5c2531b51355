"""The input embedding's gradient without a fresh dense tensor per step.

torch's embedding backward allocates a zero-filled (vocab x d) gradient every step and adds
the batch's rows into it. For MiniLM that is a 47 MB tensor (30,522 x 384) of which a batch
touches a few hundred rows; on the CPU its allocation and fill (page faults included) took
~12 ms of a ~210 ms training step. Here the gradient lives in one buffer kept across steps:
a backward sums its rows (`index_add_` into a small (rows x d) tensor) and adds the sums into
it, and when the optimizer has reset the gradient (`zero_grad(set_to_none=True)`) only the rows
written since are zeroed.

What differs from torch's backward: the embedding weight's `.grad` is the same tensor object
at every step (the buffer persists across steps and holds (vocab x d) memory between them);
code that keeps a reference to one step's `.grad` sees it overwritten at the next. The values
are the same sums (a repeated token's rows may be added in another order than torch's kernel
adds them: equal to float rounding). The optimizer, clipping and checkpoints see an ordinary
dense `.grad`. The rows outside those written stay zero under any finite scaling (clipping,
loss scaling); after a non-finite step the trainer zeroes gradients in place before dropping them.

Installed only on the CPU (CUDA's caching allocator makes the fresh tensor cheap) and where
the result is the same: one process (DDP reduces gradients through autograd hooks
this bypasses), an `nn.Embedding` with no `max_norm`/`scale_grad_by_freq`/sparse option, not
tied to an output layer, and trainable. `check_row_gradient` compares it with torch's backward
(`lmreason.models.fast_paths` applies, checks and reports it).
"""

from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

_thread = threading.local()  # .pending: this thread's deferred adds (deferred_rows), else None


@contextlib.contextmanager
def deferred_rows():
    """Backward passes in this thread, for the span, append (RowGradient, ids, grad_out) to the yielded list
    instead of adding into the buffer; the caller replays them with `RowGradient.add`, in an order it
    chooses. Batch shards computed side by side (lmreason/training/shards.py) add their rows in shard
    order this way: the same sums whichever thread finishes first."""
    pending: list = []
    before = getattr(_thread, "pending", None)
    _thread.pending = pending
    try:
        yield pending
    finally:
        _thread.pending = before


class RowGradient:
    """The persistent gradient buffer of one embedding matrix and the rows written into it."""

    def __init__(self, embedding: nn.Embedding):
        self.weight = embedding.weight
        self.padding_idx = embedding.padding_idx
        self.buffer: torch.Tensor | None = None
        self.written: list[torch.Tensor] = []

    def add(self, ids: torch.Tensor, grad_out: torch.Tensor) -> None:
        pending = getattr(_thread, "pending", None)
        if pending is not None:  # a shard's backward (deferred_rows): its caller adds the rows in order
            pending.append((self, ids, grad_out))
            return
        weight = self.weight
        if weight.grad is None:  # reset by the optimizer since the last backward: reuse the buffer
            if self.buffer is None:
                self.buffer = torch.zeros_like(weight)
            elif self.written:
                self.buffer.index_fill_(0, torch.cat(self.written).unique(), 0.0)
            self.written = []
            weight.grad = self.buffer
        rows = ids.reshape(-1)
        values = grad_out.reshape(-1, weight.shape[1]).to(weight.dtype)
        if self.padding_idx is not None:  # as torch's backward: the padding row gets no gradient
            keep = rows != self.padding_idx
            rows, values = rows[keep], values[keep]
        # As torch's backward then AccumulateGrad: this backward's rows summed first, then added to the gradient.
        # Several backward passes into one step (accumulation, adversarial training) then sum as torch sums them:
        # 0.5 g + 0.5 g is g exactly, where adding each occurrence into the buffer directly rounded differently.
        unique, inverse = rows.unique(return_inverse=True)
        sums = values.new_zeros((len(unique), weight.shape[1])).index_add_(0, inverse, values)
        weight.grad.index_add_(0, unique, sums)
        if weight.grad is self.buffer:
            self.written.append(unique)


class _Lookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ids, weight, gradient: RowGradient):
        ctx.save_for_backward(ids)
        ctx.gradient = gradient
        return F.embedding(ids, weight, gradient.padding_idx)

    @staticmethod
    def backward(ctx, grad_out):
        (ids,) = ctx.saved_tensors
        ctx.gradient.add(ids, grad_out)
        return None, None, None


class RowGradEmbedding(nn.Embedding):
    """An `nn.Embedding` whose weight gradient is accumulated by `RowGradient` (same state dict)."""

    def forward(self, ids):
        if not (self.training and self.weight.requires_grad and torch.is_grad_enabled()):
            return super().forward(ids)
        if getattr(self, "_row_gradient", None) is None:
            self._row_gradient = RowGradient(self)
        return _Lookup.apply(ids, self.weight, self._row_gradient)


def row_gradient_unsupported(model: nn.Module, device, world_size: int = 1) -> str | None:
    """Why `use_row_gradient` does not apply to `model` (None: it applies)."""
    if torch.device(device).type != "cpu":
        return "CPU only (CUDA's caching allocator makes the fresh gradient cheap)"
    if world_size > 1:
        return "more than one process (DDP reduces gradients through autograd hooks this bypasses)"
    get_input = getattr(model, "get_input_embeddings", None)
    embedding = get_input() if callable(get_input) else None
    if type(embedding) is not nn.Embedding:
        return f"the input embedding is {type(embedding).__name__}, not nn.Embedding"
    if not embedding.weight.requires_grad:
        return "the input embedding is frozen"
    if embedding.max_norm is not None or embedding.scale_grad_by_freq or embedding.sparse:
        return "the embedding uses max_norm, scale_grad_by_freq or sparse gradients"
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and getattr(output, "weight", None) is embedding.weight:
        return "the embedding is tied to the output layer (its dense gradient lands in the same .grad)"
    return None


def use_row_gradient(model: nn.Module, device, world_size: int = 1) -> bool:
    """Give `model`'s input embedding a persistent gradient buffer, in place; True when installed."""
    if row_gradient_unsupported(model, device, world_size) is not None:
        return False
    model.get_input_embeddings().__class__ = RowGradEmbedding
    return True


def undo_row_gradient(model: nn.Module) -> None:
    """Revert `use_row_gradient`: torch's own embedding backward (the buffer is dropped)."""
    embedding = model.get_input_embeddings()
    if type(embedding) is RowGradEmbedding:
        embedding.__class__ = nn.Embedding
        embedding.__dict__.pop("_row_gradient", None)


def check_row_gradient(model: nn.Module) -> str | None:
    """Two backward passes of a tiny batch with the buffer and two without; None when the gradients agree.

    The model runs in eval mode except its embedding (no dropout: both passes compute the same thing), the
    gradient is reset between the passes as the optimizer resets it (so the buffer's reuse is checked too),
    and the model's gradients and train/eval modes are restored afterwards.
    """
    embedding = model.get_input_embeddings()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, embedding.num_embeddings, (2, 6), generator=generator) for _ in range(2)]
    if embedding.padding_idx is not None:
        batches[0][1, 4:] = embedding.padding_idx  # the padding row gets no gradient
    batches = [ids.to(embedding.weight.device) for ids in batches]
    params = list(model.parameters())
    saved_grads = [p.grad for p in params]
    modes = {module: module.training for module in model.modules()}
    installed = type(embedding) is RowGradEmbedding

    def gradients(row_gradient: bool) -> list[torch.Tensor]:
        embedding.__class__ = RowGradEmbedding if row_gradient else nn.Embedding
        embedding.__dict__.pop("_row_gradient", None)
        grads = []
        for ids in batches:
            for p in params:
                p.grad = None  # as zero_grad(set_to_none=True) between steps
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
            logits = out.logits if hasattr(out, "logits") else out[0]
            logits.float().pow(2).mean().backward()
            grads.append(embedding.weight.grad.clone())
        return grads

    try:
        model.eval()
        embedding.train()
        expected, ours = gradients(False), gradients(True)
        worst = max((a - b).abs().max().item() for a, b in zip(expected, ours))
        problem = (
            None
            if worst <= 1e-6 + 1e-5 * max(a.abs().max().item() for a in expected)
            else f"the embedding gradient differs from torch's by {worst:.2g}"
        )
    except Exception as exc:  # internals this does not understand: torch's own backward
        problem = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    finally:
        embedding.__class__ = RowGradEmbedding if installed else nn.Embedding
        embedding.__dict__.pop("_row_gradient", None)
        for p, grad in zip(params, saved_grads):
            p.grad = grad
        for module, training in modes.items():
            module.training = training
    return problem
