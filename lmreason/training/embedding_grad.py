"""The input embedding's gradient without a fresh dense tensor per step.

torch's embedding backward allocates a zero-filled (vocab x d) gradient every step and adds
the batch's rows into it. For MiniLM that is a 47 MB tensor (30,522 x 384) of which a batch
touches a few hundred rows; on the CPU its allocation and fill (page faults included) took
~12 ms of a ~210 ms training step. Here the gradient lives in one buffer kept across steps:
a backward adds its rows into it (`index_add_`, the same sums), and when the optimizer has
reset the gradient (`zero_grad(set_to_none=True)`) only the rows written since are zeroed.
The optimizer, clipping and checkpoints see an ordinary dense `.grad`; values are the same.
The rows outside those written stay zero under any finite scaling (clipping, loss scaling);
after a non-finite step the trainer zeroes gradients in place before dropping them.

Installed only on the CPU (CUDA's caching allocator makes the fresh tensor cheap) and where
the result is the same: one process (DDP reduces gradients through autograd hooks
this bypasses), an `nn.Embedding` with no `max_norm`/`scale_grad_by_freq`/sparse option, not
tied to an output layer, and trainable.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RowGradient:
    """The persistent gradient buffer of one embedding matrix and the rows written into it."""

    def __init__(self, embedding: nn.Embedding):
        self.weight = embedding.weight
        self.padding_idx = embedding.padding_idx
        self.buffer: torch.Tensor | None = None
        self.written: list[torch.Tensor] = []

    def add(self, ids: torch.Tensor, grad_out: torch.Tensor) -> None:
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
        weight.grad.index_add_(0, rows, values)
        if weight.grad is self.buffer:
            self.written.append(rows)


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


def use_row_gradient(model: nn.Module, device, world_size: int = 1) -> bool:
    """Give `model`'s input embedding a persistent gradient buffer, in place; True when installed."""
    get_input = getattr(model, "get_input_embeddings", None)
    embedding = get_input() if callable(get_input) else None
    if torch.device(device).type != "cpu" or world_size > 1 or type(embedding) is not nn.Embedding or not embedding.weight.requires_grad:
        return False
    if embedding.max_norm is not None or embedding.scale_grad_by_freq or embedding.sparse:
        return False
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if output is not None and getattr(output, "weight", None) is embedding.weight:
        return False  # tied: the output layer's dense gradient lands in the same .grad
    embedding.__class__ = RowGradEmbedding
    return True
