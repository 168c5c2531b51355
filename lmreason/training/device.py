"""The `device` group: where to run, in which precision, with how many threads."""

from __future__ import annotations

import contextlib
import os

from omegaconf import DictConfig


def resolve_device(device_cfg: DictConfig):
    """(torch.device, precision: "fp32", "bf16" or "fp16") from the config; sets the thread count.

    The values were checked by `lmreason.validation` (cuda asked for but absent, fp16 without CUDA,
    threads < 1) before any work started.
    """
    import torch

    use_cuda = device_cfg.device == "cuda" or (device_cfg.device == "auto" and torch.cuda.is_available())
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    precision = str(device_cfg.precision)  # a plain string (metrics.json, banner), not the schema's enum
    if precision == "auto":
        # CUDA: bf16 autocast where supported. CPU: fp32. Measured here (torch 2.13, AVX512-BF16 CPU,
        # MiniLM, batch 32): bf16 autocast trained ~2x slower than fp32 and inferred ~1.3x slower,
        # the per-step weight casts and bf16 kernels costing more than they save. Ask for bf16 explicitly
        # where your CPU (e.g. with AMX) runs it faster.
        precision = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "fp32"
    if device_cfg.threads is not None:
        torch.set_num_threads(device_cfg.threads)
    return device, precision


def autocast(device, precision: str):
    """Mixed precision for the forward pass; weights and optimizer state stay fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
