"""torch.distributed (DDP) when launched by torchrun; a no-op single process otherwise.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK. Each rank takes its share of
every global batch; gradients are averaged by DDP; logging, TensorBoard and
checkpoints come from rank 0; early stopping is decided from metrics every
rank computes the same way.
"""

from __future__ import annotations

import contextlib
import os

from omegaconf import DictConfig


class Distributed:
    def __init__(self, world_size: int = 1, rank: int = 0, local_rank: int = 0, backend: str = "auto"):
        self.world_size, self.rank, self.local_rank, self.backend = world_size, rank, local_rank, backend
        self.initialised = False

    @classmethod
    def from_env(cls, device_cfg: DictConfig) -> "Distributed":
        return cls(int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0)),
                   int(os.environ.get("LOCAL_RANK", 0)), device_cfg.backend)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def init(self, device) -> None:
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
        """This rank's share of a global batch (strided: a length-sorted batch splits into similar lengths)."""
        return global_batch[self.rank :: self.world_size] if self.enabled else global_batch

    def shard_eval(self, batches):
        """Validation batches for this rank. Every rank validates the whole split: the metrics (and so the
        early-stopping decision) are then identical on all ranks without a gather."""
        return batches

    def gather_rng_states(self, state: dict):
        """Every rank's RNG state (rank i resumes with entry i)."""
        if not self.enabled:
            return [state]
        import torch.distributed as dist

        states = [None] * self.world_size
        dist.all_gather_object(states, state)
        return states

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
