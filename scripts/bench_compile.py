#!/usr/bin/env python
"""`device.compile=true` against eager on one training run: does compiling pay, and from what run length?

    python scripts/bench_compile.py --data ../shared/data/sst2 --train-rows 8000 --threads 2
    python scripts/bench_compile.py --data ../shared/data/sst2 --train-rows 0      # one epoch of all 67k rows

Runs `lmreason finetune model=bert data=sst2` for one epoch, as a user would, once eager and once with
`device.compile=true` (alternating which goes first over --reps), each in its own process. The compiled
runs get an empty TorchInductor cache each (what a first run pays); `--warm` adds a compiled run that
reuses the cache of the one before (what a later run with the same model pays).

Reported per mode (medians over reps): the process wall time (start-up, compilation, the epoch and the
end-of-epoch validation: what a user waits for), lmreason's train samples/s, and the steady rate (median
of the logged train/samples_per_s windows after the first quarter of the steps, i.e. after compiling).
From those: the fixed cost of compiling, overhead = (wall_compile - rows / steady_compile)
- (wall_eager - rows / steady_eager), and the run length from which compiling pays,
break_even_rows = overhead / (1 / steady_eager - 1 / steady_compile) (none when it is not faster per step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "sst2")
    p.add_argument("--train-rows", type=int, default=8000, help="seeded subset of train.csv (0: all of it)")
    p.add_argument("--model", default="bert")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="device.threads of every run (default: lmreason's)")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--warm", action="store_true", help="also a compiled run on the warm inductor cache")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--extra", nargs="*", default=[], help="more overrides for every run (e.g. train.max_steps=50)")
    return p.parse_args(argv)


def finetune(args, run_dir: Path, compiled: bool, cache: Path) -> dict:
    argv = [
        sys.executable,
        "-m",
        "lmreason",
        "finetune",
        f"model={args.model}",
        "data=sst2",
        f"data.path={args.data}",
        *([f"data.max_rows={{train: {args.train_rows}}}"] if args.train_rows else []),
        "train.epochs=1",
        f"train.batch_size={args.batch_size}",
        "train.log_every_steps=10",
        "device.precision=fp32",
        f"device.compile={str(compiled).lower()}",
        *([f"device.threads={args.threads}"] if args.threads else []),
        *args.extra,
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    load = os.getloadavg()[0]
    began = time.perf_counter()
    with open(run_dir.with_suffix(".log"), "w") as log:
        code = subprocess.call(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - began
    if code != 0:
        raise SystemExit(f"bench_compile: {' '.join(argv[3:])} exited {code}; see {run_dir.with_suffix('.log')}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    windows = logged_rates(run_dir / "tb")
    steady = statistics.median(rate for step, rate in windows if step > windows[-1][0] / 4) if windows else None
    return {
        "wall_s": wall,
        "train_samples_per_s": metrics.get("train_samples_per_s"),
        "steady_samples_per_s": steady,
        "val_acc": metrics.get("best_metric"),  # val/acc at the best step
        "validation_s": metrics.get("validation_and_checkpoint_s"),
        "load_1min": load,
    }


def logged_rates(tb_dir: Path) -> list[tuple[int, float]]:
    """(step, samples/s) of every logged window, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    if "train/samples_per_s" not in accumulator.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in accumulator.Scalars("train/samples_per_s")]


def summary(results: dict[str, list[dict]], rows: int) -> dict:
    def median(runs: list[dict], key: str):
        values = [r[key] for r in runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    med = {mode: {key: median(runs, key) for key in runs[0]} for mode, runs in results.items()}
    eager, compiled = med["eager"], med["compile"]
    fixed = {mode: m["wall_s"] - rows / m["steady_samples_per_s"] for mode, m in med.items()}
    overhead = fixed["compile"] - fixed["eager"]
    per_row_saving = 1 / eager["steady_samples_per_s"] - 1 / compiled["steady_samples_per_s"]
    return {
        "rows": rows,
        "modes": med,
        "steady_speedup": compiled["steady_samples_per_s"] / eager["steady_samples_per_s"],
        "wall_ratio_eager_over_compile": eager["wall_s"] / compiled["wall_s"],
        "compile_overhead_s": overhead,
        "break_even_rows": overhead / per_row_saving if per_row_saving > 0 else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench_compile-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"bench_compile: work dir {workdir}; load average {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, list[dict]] = {"eager": [], "compile": []}
    for rep in range(args.reps):
        for mode in ("eager", "compile") if rep % 2 == 0 else ("compile", "eager"):
            cache = workdir / f"inductor-{rep}-{mode}"
            result = finetune(args, workdir / f"{mode}-{rep}", mode == "compile", cache)
            results[mode].append(result)
            print(f"  {mode:<8} rep {rep}: {json.dumps({k: round(v, 3) for k, v in result.items() if v})}", flush=True)
        if args.warm:
            result = finetune(args, workdir / f"compile-warm-{rep}", True, workdir / f"inductor-{rep}-compile")
            results.setdefault("compile (warm cache)", []).append(result)
            print(f"  warm     rep {rep}: {json.dumps({k: round(v, 3) for k, v in result.items() if v})}", flush=True)
    rows = args.train_rows or sum(1 for _ in open(args.data / "train.csv")) - 1
    table = summary(results, rows)
    (workdir / "bench_compile.json").write_text(json.dumps({"results": results, "summary": table}, indent=2))
    print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
