"""torch.distributed (DDP) when launched by torchrun; a no-op single process otherwise.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR/PORT for the
rendezvous). Each rank takes its share of every global batch (the same
length-grouped batches a single process would see, `train.batch_size * world_size`
examples each); gradients are averaged by DDP; validation is sharded across ranks
and the task gathers the predictions; logging, TensorBoard, progress bars and
checkpoints come from rank 0; rank 0's validation metrics are broadcast, so the
early-stopping decision is taken once and is the same on every rank, and a stop
(signal, NaN) is agreed by all ranks before any acts on it.
"""

from __future__ import annotations

import contextlib
import os

from omegaconf import DictConfig


class Distributed:
    def __init__(self, world_size: int = 1, rank: int = 0, local_rank: int = 0, backend: str = "auto"):
        self.world_size, self.rank, self.local_rank, self.backend = world_size, rank, local_rank, backend
        self.initialised = False
        self.device = None

    @classmethod
    def from_env(cls, device_cfg: DictConfig) -> Distributed:
        return cls(
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("LOCAL_RANK", 0)),
            device_cfg.backend,
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device) -> None:
        self.device = device  # where the tensors of collectives live (NCCL: the rank's GPU)
        if not self.enabled or self.initialised:
            return
        import torch.distributed as dist

        backend = self.backend if self.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        if not dist.is_initialized():
            dist.init_process_group(backend=backend)
        self.initialised = True

    def wrap(self, model):
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.local_rank] if next(model.parameters()).device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def no_sync_unless(self, model, sync: bool):
        if self.enabled and not sync:
            return model.no_sync()
        return contextlib.nullcontext()

    def shard(self, global_batch):
        """(this rank's indices, weight of its mean loss) for one global batch.

        Strided: a length-sorted batch splits into shares of similar lengths. DDP averages the
        ranks' gradients, so a rank's mean loss is weighted by world_size * local / global: the
        average is then the mean over the global batch, as in one process, even when the last
        batch does not split evenly. A rank left with no example (a global batch smaller than the
        world) runs one example with weight 0: every rank must join each gradient all-reduce.
        """
        if not self.enabled:
            return global_batch, 1.0
        local = global_batch[self.rank :: self.world_size]
        if len(local) == 0:
            return global_batch[:1], 0.0
        return local, self.world_size * len(local) / len(global_batch)

    def shard_eval(self, batches):
        """This rank's validation batches (strided over the longest-first batches: balanced work).
        The task gathers the predictions (`gather_predictions`) before computing metrics."""
        return batches[self.rank :: self.world_size] if self.enabled else batches

    def gather_predictions(self, labels, probs, mean_loss: float):
        """Every rank's (labels (N,), probs (N, C), mean loss) concatenated: the whole split's predictions."""
        if not self.enabled:
            return labels, probs, mean_loss
        import numpy as np

        shards = self.all_gather((labels, probs, mean_loss * len(labels)))
        count = sum(len(s[0]) for s in shards)
        return (
            np.concatenate([s[0] for s in shards]),
            np.concatenate([s[1] for s in shards]),
            sum(s[2] for s in shards) / max(count, 1),
        )

    def all_gather(self, obj) -> list:
        """[rank 0's obj, rank 1's obj, ...] on every rank."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank (the others' values are ignored)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def mean(self, value):
        """The mean of a scalar tensor over ranks (the training loss of the global batch, for logging)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        total = value.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)  # gloo has no AVG
        return total / self.world_size

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any: ranks take the same branch (stop, skip a step)."""
        if not self.enabled:
            return flag
        import torch
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)

    def gather_rng_states(self, state: dict):
        """Every rank's RNG state (rank i resumes with entry i)."""
        return self.all_gather(state)

    @contextlib.contextmanager
    def rank_zero_first(self):
        """Rank 0 runs the block first (e.g. writes a cache), then the others (which reuse it)."""
        if not self.enabled:
            yield
            return
        import torch.distributed as dist

        if not self.is_main:
            dist.barrier()
        yield
        if self.is_main:
            dist.barrier()

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def cleanup(self) -> None:
        if self.initialised:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
