#!/usr/bin/env python
"""lmreason's backends (torch, onnx, onnx-int8) against Hugging Face `pipeline` / `Trainer.evaluate`, one model dir.

    python scripts/bench_onnx.py --run <finetune run dir> --data ../shared/data/sst2 --reps 3
    python scripts/bench_onnx.py --run <run> --phases infer --backends onnx,onnx-int8

The run is copied into the work dir (its checkpoint gets the onnx/ files), exported once
(`lmreason export export.quantize=int8`, timed and its check figures kept), then each
repetition runs every side in its own process, rotating which goes first, and medians are kept:

- infer:    `lmreason infer input=<dev.csv> backend=<b>` vs `pipeline("text-classification")` on the
            same model dir, texts and batch size. samples/s (tokenize + batch + forward, both sides)
            and the whole process's wall time (start-up, imports and model loading included: what a
            user waits for) against that of a minimal script calling `pipeline()`.
- evaluate: `lmreason evaluate split=validation backend=<b>` vs `Trainer.evaluate()` (same batch size):
            samples/s and dev accuracy of each backend.

Children are scripts/bench.py's (`--child lmreason|pipeline-infer|trainer-evaluate`), so both
benchmarks time the Hugging Face side the same way. Results print as one table and go to JSON.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = {
    "infer_onnx": 3.0,
    "infer_onnx-int8": 4.0,
    "evaluate_torch": 1.5,
    "evaluate_onnx": 2.5,
    "int8_accuracy_points": 1.0,
    "infer_wall_ratio": 1.0,
}  # issue 16 item 3


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--run", required=True, help="a finetune run dir (classification) whose best checkpoint is benchmarked"
    )
    p.add_argument(
        "--data", default=str(REPO.parent / "shared" / "data" / "sst2"), help="dir with dev.csv (text,label)"
    )
    p.add_argument("--backends", default="torch,onnx,onnx-int8")
    p.add_argument("--phases", default="infer,evaluate")
    p.add_argument("--batch-size", type=int, default=32, help="infer and evaluate, both sides")
    p.add_argument("--max-length", type=int, default=128, help="pipeline's truncation (lmreason uses the run's)")
    p.add_argument("--threads", type=int, default=None, help="threads, both sides (default: each tool's own)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument(
        "--split",
        default="validation",
        help="the run's split that holds --data's dev.csv, evaluated by lmreason (Trainer reads dev.csv itself); "
        "a run whose validation was carved from train, like the remedies experiment's, has it as test",
    )
    p.add_argument("--workdir", default=None, help="scratch dir (default: outputs/bench-onnx/<time>)")
    p.add_argument("--out", default=None, help="JSON results (default: <workdir>/bench_onnx.json)")
    return p.parse_args(argv)


def median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b else None


def main(argv=None) -> int:
    args = parse_args(argv)
    bench_module = load_bench()
    workdir = Path(args.workdir or REPO / "outputs" / "bench-onnx" / time.strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    bench_args = argparse.Namespace(workdir=str(workdir), out=None)
    bench = bench_module.Bench(bench_args)  # its child runner, environment and logs
    backends = [b for b in args.backends.split(",") if b]
    phases = set(args.phases.split(","))
    threads = [f"device.threads={args.threads}"] if args.threads else []
    run = workdir / "run"
    if not run.exists():
        shutil.copytree(Path(args.run).expanduser(), run, ignore=shutil.ignore_patterns("eval", "onnx", "tb"))
    checkpoint = run / "checkpoints" / "best"
    dev = Path(args.data).expanduser() / "dev.csv"
    data_dir = workdir / "data"  # Trainer's child reads <dir>/validation.csv
    data_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(dev, data_dir / "validation.csv")
    with open(dev, newline="", encoding="utf-8") as f:
        dev_rows = sum(1 for _ in csv.DictReader(f))
    label_names = json.loads((checkpoint / "config.json").read_text())["id2label"]
    label_names = [label_names[k] for k in sorted(label_names, key=int)]
    load = os.getloadavg()
    print(f"bench_onnx: work dir {workdir}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    results: dict = {"settings": vars(args), "revision": bench_module.git_revision(), "phases": {}}

    export = bench.lmreason(
        ["export", f"run={run}", "export.quantize=int8", *threads, f"hydra.run.dir={workdir / 'runs' / 'export'}"],
        "export fp32 + int8",
    )
    results["export"] = {"wall_s": export["wall_s"], **json.loads((checkpoint / "onnx" / "export.json").read_text())}

    if "infer" in phases:
        sides = ["pipeline", *backends]
        out: dict = {side: [] for side in sides}
        for rep in range(args.reps):
            order = sides[rep % len(sides) :] + sides[: rep % len(sides)]  # rotate who goes first
            for side in order:
                name = f"infer {side} #{rep + 1}"
                if side == "pipeline":
                    r = bench.child(
                        "pipeline-infer",
                        {
                            "model": str(checkpoint),
                            "input": str(dev),
                            "max_length": args.max_length,
                            "batch_size": args.batch_size,
                            "bf16": False,
                            "threads": args.threads,
                        },
                        name,
                    )
                else:
                    r = bench.lmreason(
                        [
                            "infer",
                            f"run={run}",
                            f"input={dev}",
                            f"output={workdir / 'runs' / f'infer-{side}.jsonl'}",
                            f"batch_size={args.batch_size}",
                            f"backend={side}",
                            *threads,
                            f"hydra.run.dir={workdir / 'runs' / f'infer-{side}-{rep + 1}'}",
                        ],
                        name,
                    )
                    match = re.search(r"(\d+) predictions in ([0-9.]+) s", Path(r["log"]).read_text())
                    r.update({"samples": int(match.group(1)), "seconds": float(match.group(2))})
                    r["samples_per_s"] = r["samples"] / r["seconds"]
                out[side].append(r)
        results["phases"]["infer"] = {
            side: {"samples_per_s": median(rs, "samples_per_s"), "wall_s": median(rs, "wall_s"), "runs": rs}
            for side, rs in out.items()
        }

    if "evaluate" in phases:
        sides = ["trainer", *backends]
        out = {side: [] for side in sides}
        for rep in range(args.reps):
            order = sides[rep % len(sides) :] + sides[: rep % len(sides)]
            for side in order:
                name = f"evaluate {side} #{rep + 1}"
                if side == "trainer":
                    r = bench.child(
                        "trainer-evaluate",
                        {
                            "model": str(checkpoint),
                            "data_dir": str(data_dir),
                            "max_length": args.max_length,
                            "eval_batch_size": args.batch_size,
                            "bf16": False,
                            "threads": args.threads,
                            "label_names": label_names,
                        },
                        name,
                    )
                else:
                    r = bench.lmreason(
                        [
                            "evaluate",
                            f"run={run}",
                            f"split={args.split}",
                            "compare_ood=false",
                            f"batch_size={args.batch_size}",
                            f"backend={side}",
                            *threads,
                            f"hydra.run.dir={workdir / 'runs' / f'evaluate-{side}-{rep + 1}'}",
                        ],
                        name,
                    )
                    metrics = json.loads((run / "eval" / args.split / "metrics.json").read_text())
                    if metrics["n"] != dev_rows:  # both sides must time the same examples
                        raise SystemExit(
                            f"bench_onnx: the run's {args.split} split has {metrics['n']} examples, {dev} has "
                            f"{dev_rows}: give the --split that holds {dev.name}"
                        )
                    r.update({"samples_per_s": metrics["samples_per_s"], "accuracy": metrics["acc"]})
                out[side].append(r)
        results["phases"]["evaluate"] = {
            side: {"samples_per_s": median(rs, "samples_per_s"), "accuracy": median(rs, "accuracy"), "runs": rs}
            for side, rs in out.items()
        }

    loads = bench.loads
    results["load"] = {
        "start": list(load),
        "median_1min": statistics.median(loads) if loads else None,
        "max_1min": max(loads) if loads else None,
    }
    table = render(results, backends)
    print(table)
    target = Path(args.out).resolve() if args.out else workdir / "bench_onnx.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({**results, "table": table}, indent=1, default=float))
    print(f"bench_onnx: wrote {target}")
    return 0


def render(results: dict, backends: list[str]) -> str:
    rows = [("", "lmreason", "Hugging Face", "ratio", "target")]
    fmt = lambda v, spec=".1f": "-" if v is None else format(v, spec)  # noqa: E731
    infer, evaluate = results["phases"].get("infer"), results["phases"].get("evaluate")
    for backend in backends:
        if infer:
            lm, hf = infer[backend], infer["pipeline"]
            r = ratio(lm["samples_per_s"], hf["samples_per_s"])
            target = TARGETS.get(f"infer_{backend}")
            rows.append(
                (
                    f"infer {backend} samples/s (vs pipeline)",
                    fmt(lm["samples_per_s"]),
                    fmt(hf["samples_per_s"]),
                    fmt(r, ".2f") + "x",
                    "" if target is None or r is None else f"{'ok' if r >= target else 'MISSED'} (>= {target:g})",
                )
            )
            w = ratio(lm["wall_s"], hf["wall_s"])
            rows.append(
                (
                    f"infer {backend} process wall s",
                    fmt(lm["wall_s"], ".2f"),
                    fmt(hf["wall_s"], ".2f"),
                    fmt(w, ".2f"),
                    "" if w is None else f"{'ok' if w <= 1 else 'MISSED'} (<= 1)",
                )
            )
        if evaluate:
            lm, hf = evaluate[backend], evaluate["trainer"]
            r = ratio(lm["samples_per_s"], hf["samples_per_s"])
            target = TARGETS.get(f"evaluate_{backend}")
            rows.append(
                (
                    f"evaluate {backend} samples/s",
                    fmt(lm["samples_per_s"]),
                    fmt(hf["samples_per_s"]),
                    fmt(r, ".2f") + "x",
                    "" if target is None or r is None else f"{'ok' if r >= target else 'MISSED'} (>= {target:g})",
                )
            )
            rows.append(
                (
                    f"evaluate {backend} dev accuracy",
                    fmt(lm["accuracy"], ".4f"),
                    fmt(hf["accuracy"], ".4f"),
                    fmt(None if lm["accuracy"] is None else 100 * (lm["accuracy"] - hf["accuracy"]), "+.1f") + " pt",
                    "",
                )
            )
    checks = results["export"].get("checks", {})
    for variant, figures in checks.items():
        rows.append(
            (
                f"export check {variant}",
                f"acc {fmt(figures.get('acc_onnx'), '.4f')}",
                f"torch {fmt(figures.get('acc_torch'), '.4f')}",
                f"agree {100 * figures['label_agreement']:.1f}%",
                f"max |dlogit| {figures['max_abs_logit_diff']:.1e}",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = [
        "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    load = results["load"]
    lines.append(
        f"export {results['export']['wall_s']:.1f} s; load average 1 min: start {load['start'][0]:.2f}, "
        f"median {fmt(load['median_1min'], '.2f')}, max {fmt(load['max_1min'], '.2f')}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
