"""The `device` group: where to run, in which precision, with how many threads."""

from __future__ import annotations

import contextlib
import logging
import math
import os

from omegaconf import DictConfig

log = logging.getLogger(__name__)


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
        precision = "bf16" if use_cuda and torch.cuda.is_bf16_supported() else "fp32"
        if not use_cuda:
            precision, why = cpu_auto_precision(cpu_flags())
            log.info("device.precision=auto on the CPU: %s (%s)", precision, why)
    choose_threads(device_cfg.threads, warn=not use_cuda)
    return device, precision


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where it cannot be read, e.g. not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_auto_precision(flags: set[str]) -> tuple[str, str]:
    """(precision, why) for `device.precision=auto` on a CPU with these feature flags.

    bf16 autocast pays only where the CPU multiplies bf16 matrices in hardware tiles (AMX: `amx_bf16`
    with `amx_tile`): measured on a Xeon with AMX, a 1024^3 bf16 matmul ran 3.9x its fp32 rate and
    Trainer trained MiniLM 1.23x faster in bf16. With AVX512-BF16 alone (an AMD EPYC, torch 2.13,
    MiniLM, batch 32) bf16 autocast trained ~2x slower and inferred ~1.3x slower than fp32: the
    per-step weight casts cost more than the bf16 dot products save. Without either: fp32.
    """
    if {"amx_bf16", "amx_tile"} <= flags:
        return "bf16", "the CPU has AMX bf16 tiles"
    return "fp32", "no AMX on this CPU: bf16 autocast measured slower than fp32 without it"


# --------------------------------------------------------------------------- threads
class ThreadChoice:
    """How many threads torch uses and why: shown in the banner, warned about when the machine is busy."""

    def __init__(self, threads: int, cores: int, load: float | None, source: str):
        self.threads, self.cores, self.load, self.source = threads, cores, load, source

    def describe(self) -> str:
        load = f"; load {self.load:.1f}" if self.load is not None else ""
        return f"{self.threads} thread{'s' if self.threads != 1 else ''} (of {self.cores} cores{load}; {self.source})"

    @property
    def contended(self) -> bool:
        """Other jobs keep busy cores these threads need (1-minute load average, whole jobs)."""
        return self.load is not None and math.floor(self.load) + self.threads > self.cores


last_thread_choice: ThreadChoice | None = None  # the latest `choose_threads`, for the banner


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask / cpuset), not every core of the host."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(cores: int, load: float | None) -> int:
    """The cores not already busy, at least 1: on a shared CPU, threads beyond the idle cores wait for
    each other at every parallel region (issue 17: all-cores threads 6-8x slower than 1 thread with one
    other job on 2 cores). `load` is how many cores other processes keep busy now (`machine_load`);
    a core counts as busy from half its time on."""
    if load is None:
        return cores
    return max(1, min(cores, cores - round(load)))


def machine_load(sample_s: float = 0.1) -> float | None:
    """Cores busy right now, from two readings of /proc/stat `sample_s` apart (this process sleeps in
    between, so the figure is the other processes'); the 1-minute load average where /proc/stat is
    missing. Not the load average first: it lags a minute, so a command run right after another (prepare,
    then finetune) would see the finished one as still busy and take half the cores of an idle machine."""
    import time

    def read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # user nice system idle iowait irq softirq steal (guest is inside user)

    first = read()
    if first is not None:
        time.sleep(sample_s)
        second = read()
        if second is not None and second[0] > first[0]:
            total, idle = second[0] - first[0], second[1] - first[1]
            return (total - idle) / total * (os.cpu_count() or 1)
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None


def choose_threads(threads: int | None, warn: bool = True) -> ThreadChoice:
    """Set torch's thread count: `device.threads` when given; else OMP_NUM_THREADS when set (torchrun,
    joblib workers, the user); else the cores not busy with other jobs. Warns (`warn`: a CPU run) in
    one line when the machine's load will slow this run down."""
    import torch

    global last_thread_choice
    cores = usable_cores()
    load = machine_load()
    if threads is not None:
        source = "device.threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        threads, source = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        threads, source = default_threads(cores, load), "idle cores"
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    last_thread_choice = ThreadChoice(threads, cores, load, source)
    if warn and last_thread_choice.contended:
        log.warning(
            "the machine is busy (load %.1f on %d cores): %d thread(s) share cores with other jobs, so this run "
            "will be slower than on an idle machine%s",
            load,
            cores,
            threads,
            "" if threads == 1 else "; device.threads=1 suffers least",
        )
    return last_thread_choice


def spinning_openmp() -> bool:
    """OMP_WAIT_POLICY=ACTIVE: idle OpenMP threads spin. They then take the cores that work side by side
    needs (MiniLM / SST-2 dev, torch: 2 batches at once 210 samples/s with ACTIVE, 316 with PASSIVE,
    lmreason's default; one batch on 2 threads 294 with ACTIVE), so side by side is off under it."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "ACTIVE"


def single_thread_pool(workers: int, name: str):
    """A thread pool whose threads each run torch ops on one intra-op thread (torch keeps the count per
    thread, so the calling thread keeps its own): work side by side on the CPU's cores."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=torch.set_num_threads, initargs=(1,))


def autocast(device, precision: str):
    """Mixed precision for the forward pass; weights and optimizer state stay fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
