"""The remedies experiment: does adversarial training, augmentation or multi-task training narrow a gap?

Trains the baseline and each remedy on the same data with the same budget and several seeds,
evaluates every run the same way (clean and OOD accuracy, robustness flip rate, attack success,
calibration before/after temperature scaling), and writes one table: mean ± std over seeds and,
for each remedy, the per-seed paired difference from the baseline with a 95% t-interval
(df = seeds - 1). A difference whose interval excludes 0 is marked real; with 3 seeds only large
effects can be, which is the honest reading of a 3-seed experiment.

    python scripts/remedies.py                              # both datasets, every remedy, 3 seeds (hours)
    python scripts/remedies.py --datasets reasoning --seeds 2 --remedies baseline,adversarial
    python scripts/remedies.py --table-only                 # rebuild the table from the runs on disk

Resumable: each (dataset, remedy, seed) lives in <out>/<dataset>/<remedy>/seed<k>/; a run that
finished training and evaluation is kept (its `remedies_done.json`), an interrupted training run is
resumed (`resume=`), an evaluation that did not finish is redone. Commands run through the CLI,
one process each, exactly as a user would type them (printed as they run).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What each remedy adds to the baseline's finetune command: one change each, nothing else.
REMEDIES = {
    "baseline": [],
    "adversarial": ["regularization=adversarial"],  # FGM on the word embeddings (conf/regularization/adversarial.yaml)
    "eda": ["augmentation=eda"],  # EDA on the training split (conf/augmentation/eda.yaml)
    "perturb": ["augmentation=perturb"],  # the robustness suites' label-preserving perturbations as augmentation
    "multitask": [],  # task=multi: the dataset's task and an auxiliary one on one encoder (multitask_overrides)
}
QUICK_SIZES = "{train: 120, validation: 40, test: 40, ood: 40}"

# The figures of the table: (key, heading, higher is better)
FIGURES = [
    ("acc", "clean acc", True),
    ("ood_acc", "OOD acc", True),
    ("flip_rate", "flip rate (INV mean)", False),
    ("attack_success", "attack success", False),
    ("ece_before", "ECE", False),
    ("ece_after", "ECE after T", False),
    ("ood_ece_before", "OOD ECE", False),
    ("ood_ece_after", "OOD ECE after T", False),
    ("train_s", "train time (s)", False),
]


@dataclass
class Budget:
    """The same for every remedy of a dataset."""

    model: str
    epochs: float
    batch_size: int
    robustness_examples: int
    attack_examples: int


def sst2_subset(out: Path, source: Path, train_rows: int, validation_rows: int, seed: int) -> Path:
    """A seeded train/validation subset of SST-2's train.csv, and its dev.csv as the test split.

    Validation (early stopping, the temperature fit) is carved from train so dev stays untouched.
    """
    target = out / "data" / "sst2"
    if (target / "test.csv").is_file():
        return target
    with open(source / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    random.Random(seed).shuffle(rows)
    target.mkdir(parents=True, exist_ok=True)
    parts = {"train": rows[:train_rows], "validation": rows[train_rows : train_rows + validation_rows]}
    for name, part in parts.items():
        with open(target / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows({"text": r["text"], "label": r["label"]} for r in part)
    (target / "test.csv").write_bytes((source / "dev.csv").read_bytes())
    return target


def dataset_entry(name: str, args) -> dict[str, str]:
    """The data config of a dataset as {key: value}: `data` is the conf/data option, the rest its keys."""
    if name == "reasoning":  # the demo's data: syllogisms, OOD = inverted ones
        return {"data": "reasoning", **({"sizes": QUICK_SIZES} if args.quick else {})}
    if name == "sst2":
        rows = (120, 40) if args.quick else (4000, 500)
        return {
            "data": "local",
            "path": str(sst2_subset(args.out, args.sst2, rows[0], rows[1], seed=0)),
            "name": "sst2",
        }
    raise SystemExit(f"--datasets: unknown dataset {name!r}; use reasoning, sst2")


def auxiliary_entry(name: str, args) -> tuple[str, dict[str, str]]:
    """The task trained beside `name` by the multitask remedy: another reasoning-gym task for the syllogisms,
    RTE (entailment, ../shared/data/rte) for SST-2. Its head is trained, not evaluated."""
    if name == "reasoning":
        return "family", {"data": "family", **({"sizes": QUICK_SIZES} if args.quick else {})}
    rte = {
        "data": "local",
        "path": str(args.sst2.parent / "rte"),
        "text_column": "text_a",
        "text_pair_column": "text_b",
    }
    return "rte", {**rte, **({"max_rows": "{train: 120}"} if args.quick else {})}


def data_overrides(entry: dict[str, str]) -> list[str]:
    """`data=<option>` and one `data.<key>=<value>` per key (quoted where the value is a dict)."""
    out = [f"data={entry['data']}"]
    for key, value in entry.items():
        if key != "data":
            out.append(f"'data.{key}={value}'" if value.startswith("{") else f"data.{key}={value}")
    return out


def multitask_overrides(name: str, args) -> list[str]:
    """task=multi with the dataset as its task `main` (the head evaluated) and its auxiliary task beside it."""

    def inline(entry):
        return "{" + ", ".join(f"{k}: {v}" for k, v in entry.items()) + "}"

    aux_name, aux = auxiliary_entry(name, args)
    tasks = f"{{main: {inline(dataset_entry(name, args))}, {aux_name}: {inline(aux)}}}"
    return ["task=multi", f"'task.tasks={tasks}'", "task.monitor=val/main/acc"]


def remedy_overrides(dataset: str, remedy: str, args) -> list[str]:
    if remedy == "multitask":
        return multitask_overrides(dataset, args)
    extra = [f"regularization.adversarial.epsilon={args.adversarial_epsilon}"] if remedy == "adversarial" else []
    return data_overrides(dataset_entry(dataset, args)) + REMEDIES[remedy] + extra


def run_command(argv: list[str], log: Path) -> None:
    """One lmreason command; its output goes to `log` (and a failure stops the experiment with its tail)."""
    shown = " ".join(argv)
    print(f"$ lmreason {shown}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ lmreason {shown}\n")
        f.flush()
        code = subprocess.call(
            [sys.executable, "-m", "lmreason", *[_unquote(a) for a in argv]], stdout=f, stderr=subprocess.STDOUT
        )
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise SystemExit(f"lmreason {shown} exited {code}; last lines of {log}:\n" + "\n".join(tail))


def _unquote(arg: str) -> str:
    """Shell-style quotes in the printed command are not part of the argument."""
    return shlex.split(arg)[0] if arg.startswith("'") else arg


def check_same_command(run_dir: Path, finetune: list[str]) -> None:
    """A run on disk is reused only for the command that made it: a changed setting (say --adversarial-epsilon)
    stops the experiment with one line instead of mixing runs of two settings in one row."""
    record = run_dir / "remedies_command.json"
    if record.is_file():
        before = json.loads(record.read_text())["finetune"]
        if before != finetune:
            changed = sorted(set(before) ^ set(finetune))
            raise SystemExit(
                f"{run_dir} was trained with another command (differs in {', '.join(changed)}); "
                "give another --out, or move that run away to retrain it"
            )
    elif run_dir.exists():
        return  # a run from before the record existed: kept as it is
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"finetune": finetune}))


def train_and_evaluate(run_dir: Path, overrides: list[str], budget: Budget, seed: int, remedy: str) -> None:
    finetune = [
        "finetune",
        f"model={budget.model}",
        *overrides,
        f"seed={seed}",
        f"train.epochs={budget.epochs}",
        f"train.batch_size={budget.batch_size}",
        f"hydra.run.dir={run_dir}",
    ]
    check_same_command(run_dir, finetune)
    done = run_dir / "remedies_done.json"
    if done.is_file():
        return
    log = run_dir.parent / f"{run_dir.name}.log"
    metrics = run_dir / "metrics.json"
    status = json.loads(metrics.read_text())["status"] if metrics.is_file() else None
    if status not in ("completed", "early_stopped"):
        if (run_dir / "checkpoints" / "last").is_dir():
            run_command(["finetune", f"resume={run_dir}"], log)
        else:
            run_command(finetune, log)
    run_command(
        [
            "evaluate",
            f"run={run_dir}",
            *(["head=main"] if remedy == "multitask" else []),
            "split=test",
            "'diagnostics=[robustness,calibration]'",
            "diagnostics.robustness.attack=greedy",
            f"diagnostics.robustness.examples={budget.robustness_examples}",
            f"diagnostics.robustness.attack_examples={budget.attack_examples}",
        ],
        log,
    )
    done.write_text(json.dumps({"finished_at": time.time()}))


# ------------------------------------------------------------------ reading the runs
def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def run_figures(run_dir: Path) -> dict:
    """The table's figures of one run, from the files its finetune and evaluate wrote (None when absent)."""
    eval_dir = run_dir / "eval"
    if (eval_dir / "main").is_dir():  # a task=multi run: its evaluated head
        eval_dir = eval_dir / "main"
    test, ood = _read(eval_dir / "test" / "metrics.json"), _read(eval_dir / "ood" / "metrics.json")
    robustness = _read(eval_dir / "test" / "robustness.json")
    calibration = _read(eval_dir / "calibration.json").get("splits", {})
    inv = [
        t["flip_rate"]
        for t in robustness.get("tests", {}).values()
        if t.get("expectation") == "INV" and t.get("applicable") and t.get("flip_rate") is not None
    ]
    return {
        "acc": test.get("acc"),
        "ood_acc": ood.get("acc"),
        "flip_rate": sum(inv) / len(inv) if inv else None,
        "attack_success": (robustness.get("attack") or {}).get("success_rate"),
        "ece_before": calibration.get("test", {}).get("ece_before"),
        "ece_after": calibration.get("test", {}).get("ece_after"),
        "ood_ece_before": calibration.get("ood", {}).get("ece_before"),
        "ood_ece_after": calibration.get("ood", {}).get("ece_after"),
        "train_s": _read(run_dir / "metrics.json").get("wall_time_s"),
    }


# ------------------------------------------------------------------ the table
def t_interval(differences: list[float]) -> tuple[float, float] | None:
    """95% t-interval of the mean of paired differences (None with fewer than 2)."""
    from scipy import stats

    n = len(differences)
    if n < 2:
        return None
    mean = statistics.fmean(differences)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return float(mean - half), float(mean + half)  # plain floats: json writes them (numpy's bool it does not)


def summarise(figures: dict[str, dict[str, dict[int, dict]]]) -> dict:
    """{dataset: {remedy: {figure: {mean, std, n, diff, ci, real, better}}}}
    from {dataset: {remedy: {seed: figures}}}."""
    table = {}
    for dataset, remedies in figures.items():
        base = remedies.get("baseline", {})
        table[dataset] = {}
        for remedy, seeds in remedies.items():
            row = {}
            for key, _, higher in FIGURES:
                values = {s: f[key] for s, f in seeds.items() if f.get(key) is not None}
                if not values:
                    continue
                cell = {
                    "mean": statistics.fmean(values.values()),
                    "std": statistics.stdev(values.values()) if len(values) > 1 else 0.0,
                    "n": len(values),
                }
                paired = [values[s] - base[s][key] for s in values if s in base and base[s].get(key) is not None]
                if remedy != "baseline" and paired:
                    ci = t_interval(paired)
                    cell["diff"] = statistics.fmean(paired)
                    cell["ci"] = ci
                    cell["real"] = bool(ci is not None and (ci[0] > 0 or ci[1] < 0))
                    cell["better"] = None if abs(cell["diff"]) < 1e-12 else (cell["diff"] > 0) == higher
                row[key] = cell
            table[dataset][remedy] = row
    return table


def markdown(table: dict) -> str:
    lines = []
    for dataset, remedies in table.items():
        keys = [(k, h) for k, h, _ in FIGURES if any(k in row for row in remedies.values())]
        lines += [f"**{dataset}**", "", "| remedy | " + " | ".join(h for _, h in keys) + " |"]
        lines.append("| --- " * (len(keys) + 1) + "|")
        for remedy, row in remedies.items():
            cells = []
            for key, _ in keys:
                cell = row.get(key)
                cells.append(_cell(cell, key) if cell else "–")
            lines.append(f"| {remedy} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "mean ± std over seeds; Δ = mean paired difference from the baseline (same seed) with its 95% t-interval; "
        "**bold** = the interval excludes 0 (a real difference at these seeds), ↑/↓ = better/worse, = the same."
    )
    return "\n".join(lines) + "\n"


def _cell(cell: dict, key: str) -> str:
    fmt = "{:.0f}" if key == "train_s" else "{:.3f}"
    text = f"{fmt.format(cell['mean'])} ± {fmt.format(cell['std'])}"
    if "diff" in cell:
        ci = cell["ci"]
        interval = f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else ""
        delta = f"Δ {cell['diff']:+.3f}{interval} {_arrow(cell['better'])}"
        text += f"<br>{'**' + delta + '**' if cell['real'] else delta}"
    return text


def _arrow(better: bool | None) -> str:
    return "=" if better is None else ("↑" if better else "↓")


def collect(out: Path, datasets: list[str], remedies: list[str], seeds: list[int]) -> dict:
    return {
        d: {
            r: {s: run_figures(out / d / r / f"seed{s}") for s in seeds if (out / d / r / f"seed{s}").is_dir()}
            for r in remedies
        }
        for d in datasets
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "remedies")
    parser.add_argument("--datasets", default="reasoning,sst2")
    parser.add_argument("--remedies", default=",".join(REMEDIES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", default="bert")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--robustness-examples", type=int, default=100)
    parser.add_argument("--attack-examples", type=int, default=50)
    parser.add_argument("--adversarial-epsilon", type=float, default=0.1, help="FGM's L2 bound per example")
    parser.add_argument("--sst2", type=Path, default=ROOT.parent / "shared" / "data" / "sst2")
    parser.add_argument("--quick", action="store_true", help="tiny data (tests): a few minutes with model=tiny-bert")
    parser.add_argument("--table-only", action="store_true", help="only rebuild the table from the runs on disk")
    args = parser.parse_args(argv)
    datasets, remedies = args.datasets.split(","), args.remedies.split(",")
    unknown = [r for r in remedies if r not in REMEDIES]
    if unknown:
        parser.error(f"--remedies: unknown {', '.join(unknown)}; choose from {', '.join(REMEDIES)}")
    if "baseline" not in remedies:
        remedies.insert(0, "baseline")  # every difference is against it
    seeds = list(range(args.seeds))
    budget = Budget(args.model, args.epochs, args.batch_size, args.robustness_examples, args.attack_examples)
    started = time.perf_counter()
    if not args.table_only:
        for dataset in datasets:
            for seed in seeds:  # seed-major: a stopped experiment has every remedy for the first seeds
                for remedy in remedies:
                    run_dir = args.out / dataset / remedy / f"seed{seed}"
                    train_and_evaluate(run_dir, remedy_overrides(dataset, remedy, args), budget, seed, remedy)
    table = summarise(collect(args.out, datasets, remedies, seeds))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "remedies.json").write_text(json.dumps(table, indent=2))
    text = markdown(table)
    (args.out / "remedies.md").write_text(text)
    print(text)
    print(f"table: {args.out / 'remedies.md'} ({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
