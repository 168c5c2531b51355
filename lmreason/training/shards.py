"""A training micro-batch split into shards computed side by side on the CPU's threads, one thread each.

On a 2-thread CPU, one MiniLM micro-batch (32 x ~25 tokens x 384) at a time splits its matmuls
poorly over the two threads. Here the micro-batch's examples are sorted by length and split into
one shard per thread; each shard's forward and backward run in a worker thread of its own on one
intra-op thread, and the shards' gradients are summed, in shard order, into the parameters'
`.grad`. Gradient clipping's two passes over the gradients run side by side too (`clip_grad_norm`:
19.8 -> 8.8 ms per MiniLM step, measured in training), and so does a fused AdamW's update (`optimizer_step`).
Measured with `lmreason finetune model=bert` on 4,000 SST-2 rows, batch 32, 120 steps, 2 threads,
idle 2-core VM, 3 interleaved pairs: 90.7 train samples/s (median) with one pass per micro-batch,
121.4 with two shards (1.34x). The shards are cut for equal padded work (`balanced_cuts`): a first
version that halved the sorted micro-batch gained only ~1.1x, the step waiting for the longer half.
Why one micro-batch on 2 threads is slow here: lmreason runs OpenMP with OMP_WAIT_POLICY=PASSIVE (idle
threads sleep, which keeps a busy machine usable), so every parallel op wakes the second thread; shards
run on one thread each and have nothing to wake. Under ACTIVE (spinning threads) one pass is faster and
shards step aside (README, Benchmarks).

What it computes is the micro-batch's gradient: each shard's mean loss is weighted by the share of
the micro-batch's loss terms it holds (`task.loss_terms`: rows; completion tokens for task=gen), so
the weighted sum is the micro-batch's mean loss; shards pad only to their own longest example. What
differs from one pass over the micro-batch: sums in another order (equal to float rounding), and the
dropout masks: each shard draws its masks from a generator of its own
(`dropout.mask_generator`), seeded from torch's default generator in shard order, so a seeded run is
as reproducible, and resumes as exactly, as without shards, but draws other masks. The input
embedding's row gradient (`embedding_grad.deferred_rows`) is added in shard order too.

It applies where that holds: on the CPU, with more than one thread, in one process, without
adversarial training (its perturbation hook keeps state per pass) or `device.compile`, for a task
that says how many terms its loss averages, and when every random draw of the forward pass goes
through `fast_dropout`'s masks (torch's own dropout draws from one generator shared by all threads,
which would make the masks depend on thread timing). `check_shards` compares the shards' gradient
with one pass's on a real micro-batch without dropout; `lmreason.models.fast_paths` reports it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn as nn

from lmreason.training.device import single_thread_pool, spinning_openmp


def shards_unsupported(model: nn.Module, device, task, *, world_size: int, adversarial: bool, compiled: bool):
    """Why a micro-batch is not split into shards for `model` (None: it is)."""
    from lmreason.training.dropout import ATTENTION, attention_dropout

    if torch.device(device).type != "cpu":
        return "CPU only (a GPU runs one batch on all its cores)"
    if torch.get_num_threads() < 2:
        return "one thread"
    if spinning_openmp():  # measured: 85-110 train samples/s with it, 125-137 under PASSIVE
        return "OMP_WAIT_POLICY=ACTIVE (spinning threads take the shards' cores)"
    if world_size > 1:
        return "one process only (DDP already splits the batch)"
    if adversarial:
        return "not with adversarial training"
    if compiled:
        return "not with device.compile"
    if not hasattr(task, "loss_terms"):
        return f"task={task.name} does not say how many terms its loss averages"
    if any(type(module) is nn.Dropout and module.p > 0 for module in model.modules()):
        return "torch's dropout draws from one generator shared by the threads (fast_dropout is off)"
    config = getattr(model, "config", None)
    attention_p = attention_dropout(config)
    if attention_p > 0 and getattr(config, "_attn_implementation", None) != ATTENTION:
        return "the attention's dropout draws from one generator shared by the threads"
    return None


class Shards:
    """Splits micro-batches into `count` shards and computes their summed gradient side by side."""

    def __init__(self, model: nn.Module, count: int):
        self.count = count
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.pool = single_thread_pool(count, "lmreason-shard")

    def split(self, indices: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
        """The micro-batch's example indices sorted by length and cut into up to `count` shards (none empty)
        of about equal work: the shards run side by side, so the step waits for the one with the most
        padded tokens (rows x its longest example); `balanced_cuts` makes that as small as it can be."""
        indices = np.asarray(indices)
        ordered = indices[np.argsort(lengths[indices], kind="stable")]
        cuts = balanced_cuts(lengths[ordered], min(self.count, len(ordered)))
        return [ordered[a:b] for a, b in zip([0, *cuts], [*cuts, len(ordered)])]

    def backward(self, loss_of: Callable, batches: list[dict], terms: list[int], scale: float) -> torch.Tensor:
        """Accumulate into `.grad` the gradient of scale x (the micro-batch's mean loss); returns that loss, detached.

        `loss_of(batch)` is a shard's mean loss (its forward pass); `terms` the loss terms of each shard.
        The shards' gradients are summed here, after every shard's pass. Summing each parameter in the
        workers as soon as all shards had its gradient (tensor hooks; no second set of gradients held) was
        tried and measured 11% slower per micro-batch (MiniLM, 30 interleaved rounds), and the run's peak
        RSS did not move: it comes at validation, not here.
        """
        from lmreason.training.dropout import mask_generator
        from lmreason.training.embedding_grad import deferred_rows

        total = max(sum(terms), 1)
        seeds = torch.randint(0, 2**62, (len(batches),)).tolist()  # torch's default generator, in shard order

        def one(k: int):
            with mask_generator(torch.Generator().manual_seed(seeds[k])), deferred_rows() as rows:
                loss = loss_of(batches[k]) * (scale * terms[k] / total)
                grads = torch.autograd.grad(loss, self.params, allow_unused=True)
            return loss.detach(), grads, rows

        results = list(self.pool.map(one, range(len(batches))))
        shared = _sharing_storage([grads for _, grads, _ in results])

        def sum_run(run: tuple[int, int]) -> None:  # parameters start..end-1, in shard order
            for i in range(*run):
                summed = None
                for _, grads, _ in results:
                    g = grads[i]
                    if g is not None:
                        if summed is None:  # summed into in place, unless another parameter's gradient is this tensor
                            summed = g.clone() if i in shared else g
                        else:
                            summed.add_(g)
                if summed is not None:
                    param = self.params[i]
                    param.grad = summed if param.grad is None else param.grad.add_(summed)

        sizes = [
            p.numel() if any(grads[i] is not None for _, grads, _ in results) else 0 for i, p in enumerate(self.params)
        ]
        list(self.pool.map(sum_run, _size_runs(sizes, self.count)))  # the sums side by side too
        for _, _, rows in results:  # the embedding's row gradient, in shard order
            for gradient, ids, grad_out in rows:
                gradient.add(ids, grad_out)
        return torch.stack([loss for loss, _, _ in results]).sum()

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """`torch.nn.utils.clip_grad_norm_` (2-norm) of the parameters' gradients, side by side: each thread takes
        the norms of, and then scales, its share of the gradients (runs of parameters of about equal size), so
        the two passes over the gradients run on every core without waking OpenMP threads. The total is the
        2-norm of the per-parameter norms in parameter order, as torch's; the scaling is skipped where the
        factor is exactly 1 (nothing to clip: the gradients are unchanged either way). Returns the total norm."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return torch.zeros(())
        shares = _size_runs([g.numel() for g in grads], self.count)

        def norms(run):
            return [torch.linalg.vector_norm(g) for g in grads[run[0] : run[1]]]

        def scale(run):
            for g in grads[run[0] : run[1]]:
                g.mul_(factor)

        total = torch.linalg.vector_norm(torch.stack([n for run in self.pool.map(norms, shares) for n in run]))
        factor = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        if factor.item() != 1.0:
            list(self.pool.map(scale, shares))
        return total

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """`optimizer.step()`, with a fused AdamW's update split over the threads: each updates its share of the
        parameters (runs of about equal size) and their moments through torch's functional `adamw`, the
        kernel `step()` itself calls, so the weights, moments and step counts are bit for bit `step()`'s
        (the update is elementwise, per parameter). The fused kernel is memory-bound: on one thread it left
        the second core idle (MiniLM step, 2 threads: 24.8 -> 17.5 ms, interleaved). Any other optimizer,
        and a step that must first create the moments (the run's first), goes through `step()` itself.
        Optimizer step hooks are not run on the split path: lmreason registers none."""
        shares = _adamw_shares(optimizer, self.count)
        if shares is None:
            optimizer.step()
            return
        from torch.optim.adamw import adamw

        def update(share):
            with torch.no_grad():  # grad mode is per thread; step() runs under no_grad
                for group, params in share:
                    state = [optimizer.state[p] for p in params]
                    beta1, beta2 = group["betas"]
                    adamw(
                        params,
                        [p.grad for p in params],
                        [s["exp_avg"] for s in state],
                        [s["exp_avg_sq"] for s in state],
                        [s["max_exp_avg_sq"] for s in state] if group["amsgrad"] else [],
                        [s["step"] for s in state],
                        fused=True,
                        amsgrad=group["amsgrad"],
                        beta1=beta1,
                        beta2=beta2,
                        lr=group["lr"],
                        weight_decay=group["weight_decay"],
                        eps=group["eps"],
                        maximize=group["maximize"],
                    )

        list(self.pool.map(update, shares))

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def _adamw_shares(optimizer, parts: int) -> list[list[tuple[dict, list]]] | None:
    """A fused AdamW's parameters with gradients cut into up to `parts` runs of about equal size, each run as
    (param group, its parameters in the run) pairs; None where `optimizer.step()` must run itself: another
    optimizer, a setting the split does not carry (capturable, differentiable, a tensor lr), or a parameter
    whose moments do not exist yet."""
    if type(optimizer) is not torch.optim.AdamW:
        return None
    pairs = []
    for group in optimizer.param_groups:
        if not group["fused"] or group["capturable"] or group["differentiable"] or torch.is_tensor(group["lr"]):
            return None
        for p in group["params"]:
            if p.grad is not None:
                if "exp_avg" not in optimizer.state.get(p, {}):
                    return None
                pairs.append((group, p))
    if not pairs:
        return None
    shares = []
    for start, end in _size_runs([p.numel() for _, p in pairs], parts):
        share: list[tuple[dict, list]] = []
        for group, p in pairs[start:end]:
            if share and share[-1][0] is group:
                share[-1][1].append(p)
            else:
                share.append((group, [p]))
        shares.append(share)
    return shares


def _sharing_storage(shards_grads: list[tuple]) -> set[int]:
    """Indices of the parameters whose gradient, in some shard, shares its storage with another parameter's:
    autograd can hand one tensor to several inputs (`x + a + b` gives a and b the same gradient), and
    summing into it in place would change both."""
    shared = set()
    for grads in shards_grads:
        first: dict[int, int] = {}
        for i, g in enumerate(grads):
            if g is not None:
                j = first.setdefault(g.untyped_storage().data_ptr(), i)
                if j != i:
                    shared.update((i, j))
    return shared


def _size_runs(sizes: list[int], parts: int) -> list[tuple[int, int]]:
    """`sizes` cut into up to `parts` consecutive non-empty runs (start, end) of about equal total size."""
    total, runs, start, done = sum(sizes), [], 0, 0
    for i, size in enumerate(sizes[:-1]):
        done += size
        wanted = parts - 1 - len(runs)  # cuts still to make
        left = len(sizes) - i - 1  # entries after this one
        if wanted > 0 and (done * parts >= total * (len(runs) + 1) or left == wanted):
            runs.append((start, i + 1))
            start = i + 1
    return [*runs, (start, len(sizes))]


def balanced_cuts(sorted_lengths: np.ndarray, parts: int) -> list[int]:
    """Cut points splitting ascending `sorted_lengths` into `parts` non-empty runs whose largest padded size
    (run length x its last, longest, entry) is the smallest possible."""
    lengths = [max(int(x), 1) for x in sorted_lengths]
    n = len(lengths)

    def cuts_within(limit: int) -> list[int] | None:
        """Runs taken greedily from the longest end, each as long as `limit` allows; None if more than `parts`."""
        cuts, end = [], n
        while end > 0:
            start = max(end - limit // lengths[end - 1], 0)
            if start == end:  # one example alone exceeds the limit
                return None
            if start > 0:
                cuts.append(start)
            end = start
        if len(cuts) + 1 > parts:
            return None
        cuts = sorted(cuts)
        # fewer runs than parts (a loose limit): split the longest runs until every shard has work
        while len(cuts) + 1 < parts:
            bounds = list(zip([0, *cuts], [*cuts, n]))
            a, b = max((ab for ab in bounds if ab[1] - ab[0] > 1), key=lambda ab: (ab[1] - ab[0]) * lengths[ab[1] - 1])
            cuts = sorted([*cuts, (a + b) // 2])
        return cuts

    low, high = max(lengths), n * max(lengths)  # the limit's bounds: one example; everything in one run
    while low < high:
        middle = (low + high) // 2
        if cuts_within(middle) is None:
            low = middle + 1
        else:
            high = middle
    return cuts_within(low)


def check_shards(shards: Shards, model: nn.Module, loss_of: Callable, batches: list[dict], terms: list[int]):
    """None when the shards' gradient equals one pass's over the same examples (dropout off, rtol 1e-4), else
    what differed. `batches`: the shards of one micro-batch and, last, the whole of it. Gradients, modes and
    torch's RNG state are left as they were (the check starts and ends with no gradients)."""
    modes = {module: module.training for module in model.modules()}
    model.eval()  # no dropout: the one pass and the shards compute the same function
    try:
        with torch.random.fork_rng(devices=[]):
            loss_of(batches[-1]).backward()
            reference = {p: (p.grad.clone() if p.grad is not None else None) for p in shards.params}
            _zero(shards.params)
            shards.backward(loss_of, batches[:-1], terms, 1.0)
            for p in shards.params:
                a, b = reference[p], p.grad
                if (a is None) != (b is None):
                    return "a parameter got a gradient from one computation only"
                if a is not None and not torch.allclose(a, b, rtol=1e-4, atol=1e-6):
                    return f"gradients differ by {(a - b).abs().max().item():.2g}"
    finally:
        _zero(shards.params)
        for module, training in modes.items():
            module.training = training
    return None


def _zero(params) -> None:
    for p in params:
        p.grad = None
