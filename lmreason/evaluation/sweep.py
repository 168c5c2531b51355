"""`lmreason evaluate sweep=<multirun dir>`: one table comparing every run of a sweep.

A Hydra multirun dir holds one run dir per job (`<sweep>/0/`, `<sweep>/1/`, ...). For each
it reads the overrides Hydra recorded (`.hydra/overrides.yaml`), the run's `metrics.json`
(final, or partial while the run trains) and, where `lmreason evaluate run=<job dir>` was
run, `eval/<split>/metrics.json`. Runs that failed, diverged, still run, or died without a
trace get a status instead of breaking the report. The table goes to the terminal and to
`sweep_report.csv` / `sweep_report.json` in the sweep dir.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import socket
import time
from pathlib import Path

from lmreason.atomic import atomic_write, atomic_write_json
from lmreason.errors import UserError

FINISHED = ("completed", "early_stopped")  # the statuses that can be "best"
STATUS_STYLE = {
    "completed": "green",
    "early_stopped": "green",
    "running": "yellow",
    "interrupted": "yellow",
    "diverged": "red",
    "failed": "red",
    "killed": "red",
    "unreadable": "red",
    "unknown": "dim",
}
RUN_PARTS = {".hydra", "metrics.json", "checkpoints"}  # any of these marks a run dir
INSIDE_A_RUN = {"checkpoints", "tb", "eval"}  # never searched for runs


def sweep_report(sweep_dir) -> dict:
    """Read every run under `sweep_dir`, print the comparison and write sweep_report.csv/.json there.

    Raises:
        UserError: the dir does not exist or holds no run dirs.
    """
    from lmreason.ui import console

    root = Path(sweep_dir).expanduser()
    if not root.is_dir():
        raise UserError(
            f"sweep={sweep_dir}: no such directory; "
            "give the dir of a multirun (outputs/finetune/multirun/<date>/<time>)"
        )
    run_dirs = find_run_dirs(root)
    if not run_dirs and any((root / part).exists() for part in RUN_PARTS):
        raise UserError(
            f"sweep={sweep_dir} is a single run dir; use lmreason evaluate run={sweep_dir}, "
            "or give the multirun dir that holds it"
        )
    if not run_dirs:
        raise UserError(
            f"sweep={sweep_dir}: no run dirs in it (a multirun dir holds one dir per job, each with .hydra/); "
            "give the dir `lmreason finetune -m ...` printed"
        )
    runs = [read_run(path, root) for path in run_dirs]
    varying, fixed = split_overrides([r["overrides"] for r in runs])
    monitor = next((r["monitor"] for r in runs if r["monitor"]), None)
    mode = next((r["mode"] for r in runs if r["mode"]), "max")
    best = best_run(runs, monitor, mode)
    for run in runs:
        run["is_best"] = best is not None and run is best
    eval_columns = sorted({key for r in runs for key in r["eval"]})
    report = {
        "sweep_dir": str(root.resolve()),
        "monitor": monitor,
        "mode": mode,
        "best_run": best["run"] if best else None,
        "best_metric": best["best_metric"] if best else None,
        "varying_overrides": varying,
        "fixed_overrides": fixed,
        "optuna": _optuna_results(root),
        "runs": runs,
    }
    atomic_write_json(root / "sweep_report.json", report)
    _write_csv(root / "sweep_report.csv", runs, varying, eval_columns)
    console.print(sweep_table(report, eval_columns))
    if best:
        console.print(
            f"[bold green]best[/]: run {best['run']} ({best['dir']}) with {monitor} = {best['best_metric']:.4f}"
        )
    else:
        console.print("[yellow]no run has finished with a finite validation metric yet[/]")
    console.print(f"written: {root / 'sweep_report.csv'} and {root / 'sweep_report.json'}")
    report["comparison_page"] = _comparison_page(root, run_dirs)
    return report


def _comparison_page(root: Path, run_dirs: list[Path]) -> str | None:
    """compare.html in the sweep dir over the runs that were evaluated (the first of them is the baseline);
    the reason on the terminal when there are fewer than two, or they are not comparable."""
    from lmreason.evaluation.compare import compare_runs, write_comparison
    from lmreason.ui import console

    evaluated = [d for d in run_dirs if any((d / "eval").glob("*/*.jsonl"))]
    if len(evaluated) < 2:
        console.print(
            f"[dim]no comparison page: {len(evaluated)} run(s) evaluated; "
            "evaluate each with lmreason evaluate run=<job dir>, then run this again[/]"
        )
        return None
    try:
        page = write_comparison(compare_runs([str(d) for d in evaluated]), root)
    except UserError as exc:
        console.print(f"[yellow]no comparison page[/]: {exc}")
        return None
    console.print(f"comparison: [link=file://{page.resolve()}]file://{page.resolve()}[/link]")
    return str(page)


def find_run_dirs(root: Path, depth: int = 3) -> list[Path]:
    """Run dirs under `root`, in job order (0, 1, ..., 10; a dir of several sweeps is searched too)."""
    found = []
    children = (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name not in INSIDE_A_RUN)
    for child in sorted(children, key=_natural_key):
        if any((child / part).exists() for part in RUN_PARTS):
            found.append(child)
        elif depth > 1:
            found.extend(find_run_dirs(child, depth - 1))
    return found


def read_run(run_dir: Path, root: Path) -> dict:
    """One row of the report; never raises on a damaged run (its status and note say what is wrong)."""
    run = {
        "run": str(run_dir.relative_to(root)),
        "dir": str(run_dir),
        "overrides": _read_overrides(run_dir),
        "status": "unknown",
        "monitor": None,
        "mode": None,
        "best_metric": None,
        "best_step": None,
        "steps": None,
        "wall_time_s": None,
        "eval": {},
        "note": "",
    }
    path = run_dir / "metrics.json"
    if not path.is_file():
        run["note"] = "no metrics.json: still setting up, or stopped before training"
        return run
    try:
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        run.update(status="unreadable", note=f"metrics.json unreadable ({str(exc)[:80]})")
        return run
    run.update(
        status=str(metrics.get("status", "unknown")),
        monitor=metrics.get("monitor"),
        mode=metrics.get("mode"),
        best_step=metrics.get("best_step"),
        steps=metrics.get("steps"),
        wall_time_s=_number(metrics.get("wall_time_s")),
    )
    run["best_metric"] = _number(metrics.get("best_metric"))
    if run["status"] == "running":
        run["status"], run["note"] = _liveness(metrics.get("process") or {})
    elif metrics.get("error"):
        run["note"] = str(metrics["error"])[:200]
    elif run["status"] == "diverged":
        run["note"] = "NaN/inf loss or gradient"
    elif run["status"] == "interrupted":
        run["note"] = f"resume with: lmreason finetune resume={run_dir}"
    metric = (run["monitor"] or "").split("/", 1)[-1]
    at_majority = []
    val_acc, majority = (
        _number((metrics.get("val") or {}).get("val/acc")),
        _number(metrics.get("val_majority_baseline")),
    )
    if val_acc is not None and majority is not None and val_acc <= majority + 1e-9:
        at_majority.append(f"validation acc {val_acc:.3f}")
    for split_dir in sorted((run_dir / "eval").glob("*/metrics.json")):
        try:
            split_metrics = json.loads(split_dir.read_text())
            value = _number(split_metrics.get(metric))
        except (OSError, ValueError, AttributeError):
            split_metrics, value = {}, None
        if value is not None:
            run["eval"][f"{split_dir.parent.name}/{metric}"] = value
        acc, base = _number(split_metrics.get("acc")), _number(split_metrics.get("majority_baseline"))
        if acc is not None and base is not None and acc <= base + 1e-9:
            at_majority.append(f"{split_dir.parent.name} acc {acc:.3f}")
    run["at_majority_baseline"] = bool(at_majority)
    if at_majority:  # a model that learned nothing: it predicts (no better than) the most frequent class
        flag = f"at the majority baseline ({', '.join(at_majority)}): learned nothing beyond the most frequent class"
        run["note"] = f"{run['note']}; {flag}" if run["note"] else flag
    return run


def split_overrides(override_maps: list[dict]) -> tuple[list[str], dict]:
    """(keys whose value differs between runs, {key: value} the same in every run)."""
    keys = list(dict.fromkeys(k for overrides in override_maps for k in overrides))
    varying, fixed = [], {}
    for key in keys:
        values = [overrides.get(key) for overrides in override_maps]
        if len(set(values)) > 1:
            varying.append(key)
        else:
            fixed[key] = values[0]
    return varying, fixed


def best_run(runs: list[dict], monitor, mode: str):
    """The finished run with the best finite monitored value; diverged, failed and running runs never are."""
    candidates = [
        r for r in runs if r["status"] in FINISHED and r["monitor"] == monitor and r["best_metric"] is not None
    ]
    if not candidates:
        return None
    pick = max if mode == "max" else min
    return pick(candidates, key=lambda r: r["best_metric"])


def sweep_table(report: dict, eval_columns: list[str]):
    from rich.table import Table

    runs, varying = report["runs"], report["varying_overrides"]
    fixed = "  ".join(f"{k}={v}" for k, v in report["fixed_overrides"].items())
    table = Table(
        title=f"sweep {report['sweep_dir']}: {len(runs)} run(s)",
        title_justify="left",
        caption=f"same in every run: {fixed}" if fixed else None,
        caption_justify="left",
    )
    table.add_column("run", style="bold")
    for label in _short_labels(varying):  # optimizer.lr -> lr (full keys in the CSV/JSON)
        table.add_column(label, justify="right")
    table.add_column(f"best {report['monitor'] or 'metric'} ({report['mode']})", justify="right")
    for column in eval_columns:
        table.add_column(column, justify="right")
    table.add_column("wall", justify="right")
    table.add_column("status")
    notes = any(run["note"] for run in runs)
    if notes:
        table.add_column("note", overflow="fold", min_width=20)
    for run in runs:
        style = STATUS_STYLE.get(run["status"], "")
        table.add_row(
            ("★ " if run["is_best"] else "") + ("⚠ " if run.get("at_majority_baseline") else "") + run["run"],
            *(_short(run["overrides"].get(key)) for key in varying),
            _fmt(run["best_metric"]),
            *(_fmt(run["eval"].get(column)) for column in eval_columns),
            _duration(run["wall_time_s"]),
            f"[{style}]{run['status']}[/]" if style else run["status"],
            *([run["note"]] if notes else []),
            style="bold" if run["is_best"] else None,
        )
    return table


# ---------------------------------------------------------------------------- helpers
def _read_overrides(run_dir: Path) -> dict:
    """{key: value} from Hydra's record of the job's command-line overrides (`+`/`++` prefixes dropped)."""
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        items = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else []
    except Exception:  # a damaged record: the run still gets its row
        items = []
    overrides = {}
    for item in items if isinstance(items, list) else []:
        key, sep, value = str(item).partition("=")
        if sep:
            overrides[key.lstrip("+~")] = value
    return overrides


def _liveness(process: dict) -> tuple[str, str]:
    """("running" | "killed", note) for a run whose last word was "running"."""
    updated = process.get("updated_at")
    age = (
        f"last update {_duration(time.time() - updated)} ago" if isinstance(updated, (int, float)) else "no update time"
    )
    pid, host = process.get("pid"), process.get("host")
    if host == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return "killed", f"its process {pid} is gone ({age}); continue it with lmreason finetune resume=<run dir>"
        except PermissionError:
            pass  # exists, owned by someone else
    return "running", age + (f" on {host}" if host and host != socket.gethostname() else "")


def _short_labels(keys: list[str]) -> list[str]:
    """The last dotted part of each key where that is unambiguous."""
    short = [key.rsplit(".", 1)[-1] for key in keys]
    return [s if short.count(s) == 1 else key for s, key in zip(short, keys)]


def _optuna_results(root: Path):
    path = root / "optimization_results.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path))
    except Exception:
        return None


def _number(value):
    """A finite float, or None (for null, NaN, inf and non-numbers)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def _short(value) -> str:
    if value is None:
        return "—"
    try:
        number = float(value)
    except ValueError:
        return value
    return value if re.fullmatch(r"-?\d+", value) else f"{number:.4g}"


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _duration(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else (f"{minutes}m{secs:02d}s" if minutes else f"{secs}s")


def _write_csv(path: Path, runs: list[dict], varying: list[str], eval_columns: list[str]) -> None:
    header = [
        "run",
        "is_best",
        "status",
        *varying,
        "monitor",
        "best_metric",
        "best_step",
        "steps",
        *eval_columns,
        "wall_time_s",
        "note",
        "dir",
    ]
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    writer.writerow(header)
    for run in runs:
        writer.writerow(
            [
                run["run"],
                run["is_best"],
                run["status"],
                *(run["overrides"].get(k, "") for k in varying),
                run["monitor"] or "",
                _blank(run["best_metric"]),
                _blank(run["best_step"]),
                _blank(run["steps"]),
                *(_blank(run["eval"].get(c)) for c in eval_columns),
                _blank(run["wall_time_s"]),
                run["note"],
                run["dir"],
            ]
        )
    atomic_write(path, handle.getvalue())


def _blank(value):
    return "" if value is None else value
