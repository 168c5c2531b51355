"""What the reasoning report says, read from the files an evaluation left (no model, no rendering).

`run_summary(...)` collects, for the evaluated splits: the run's settings (its saved config), each
split's metrics.json, the ID-vs-OOD gap (gap.json, with its bootstrap intervals) and a sentence
that says what the headline numbers mean. The page (report_page.py) and the TensorBoard text
entry render this same summary.
"""

from __future__ import annotations

import json
from pathlib import Path

HEADLINE = {"cls": "acc", "gen": "exact_match"}  # the metric the summary sentence is about
METRIC_NAMES = {"acc": "accuracy", "exact_match": "exact match", "score": "mean score", "ece": "ECE"}


def read_json(path: Path):
    """A JSON file's content, or None when it is missing or unreadable (the report shows what exists)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_config(run_dir: Path | None, saved=None) -> dict | None:
    """A run's resolved config as a plain dict: its .hydra/config.yaml, else the config saved beside the
    checkpoint (`saved`, a DictConfig), else None (a plain model dir). Read as data, never instantiated."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / ".hydra" / "config.yaml" if run_dir is not None else None
    try:
        if path is not None and path.is_file():
            return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # a damaged record: fall back to the checkpoint's copy
        pass
    return OmegaConf.to_container(saved, resolve=False) if saved is not None else None


def settings_of(config: dict | None) -> dict[str, dict[str, str]]:
    """{"model": {...}, "data": {...}, "training": {...}}: the settings a reader needs, from a run's config."""
    config = config or {}
    model, data = config.get("model") or {}, config.get("data") or {}
    train, optimizer = config.get("train") or {}, config.get("optimizer") or {}
    regularization, scheduler = config.get("regularization") or {}, config.get("scheduler") or {}
    picked = {
        "model": {
            "model": model.get("name_or_path"),
            "from scratch": model.get("from_scratch"),
            "max length": model.get("max_length"),
            "LoRA": (model.get("lora") or {}).get("enabled"),
        },
        "data": {
            "source": data.get("source"),
            "name": data.get("name"),
            "path": data.get("path"),
            "task": (config.get("task") or {}).get("name"),
        },
        "training": {
            "optimizer": optimizer.get("name"),
            "lr": optimizer.get("lr"),
            "scheduler": scheduler.get("name"),
            "epochs": train.get("epochs"),
            "max steps": train.get("max_steps"),
            "batch size": train.get("batch_size"),
            "weight decay": regularization.get("weight_decay"),
            "seed": config.get("seed"),
        },
    }
    return {group: {k: str(v) for k, v in items.items() if v is not None} for group, items in picked.items()}


def points(value, ci=None) -> str:
    """A share as points with its interval: 0.734 [0.71, 0.76] -> "73.4 (CI 71.0–76.0)"."""
    if value is None:
        return "—"
    text = f"{100 * value:.1f}"
    return f"{text} (CI {100 * ci[0]:.1f}–{100 * ci[1]:.1f})" if ci else text


def headline_sentence(task: str, gap: dict | None, id_name: str, about: str | None = None) -> str:
    """One sentence on the headline metric, e.g. "accuracy falls 34.0 points (CI 29.0–39.0) from test to
    ood": a fall or a rise when the gap's interval excludes 0, "no clear difference" when it contains 0."""
    key = HEADLINE[task]
    name = METRIC_NAMES[key]
    row = (gap or {}).get(key)
    where = f"from {id_name} to the OOD split" + (f": {about}" if about else "")
    if not row or row.get("gap") is None:
        return f"No OOD split was evaluated, so there is no gap to report; {name} is read on {id_name} alone."
    drop, ci = row["gap"], row.get("gap_ci")
    interval = f" (95% CI {100 * ci[0]:.1f} to {100 * ci[1]:.1f})" if ci else ""
    if ci and ci[0] <= 0 <= ci[1]:
        change = 100 * -drop + 0.0  # + 0.0: no "-0.0"
        return (
            f"{name.capitalize()} changes by {change:+.1f} points{interval} {where}; the interval contains 0, "
            "so this gap is within the noise of the examples evaluated."
        )
    verb = "falls" if drop > 0 else "rises"
    return f"{name.capitalize()} {verb} {100 * abs(drop):.1f} points{interval} {where}."


def run_summary(eval_dir: Path, splits: list[str], config: dict | None, task: str, about: str | None = None) -> dict:
    """The summary card's content: settings, per-split metrics, gap rows and the sentence."""
    eval_dir = Path(eval_dir)
    metrics = {s: read_json(eval_dir / s / "metrics.json") or {} for s in splits}
    gap_file = read_json(eval_dir / "gap.json") if "ood" in splits and len(splits) > 1 else None
    gap = (gap_file or {}).get("gap")
    return {
        "task": task,
        "splits": splits,
        "id_split": splits[0],
        "ood_split": "ood" if "ood" in splits[1:] else None,
        "settings": settings_of(config),
        "metrics": metrics,
        "gap": gap,
        "sentence": headline_sentence(task, gap, splits[0], about),
        "majority": {
            s: m.get("majority_baseline") for s, m in metrics.items() if m.get("majority_baseline") is not None
        },
    }


def summary_markdown(summary: dict) -> str:
    """The summary as Markdown (TensorBoard's text plugin renders Markdown tables, not HTML)."""
    lines = [f"**{summary['sentence']}**", ""]
    id_name, ood = summary["id_split"], summary["ood_split"]
    header = ["metric", id_name] + ([ood, "OOD worse by (95% CI)"] if ood else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = list(summary["gap"]) if summary["gap"] else [k for k in ("acc", "f1_macro", "ece", "exact_match", "score")]
    for key in keys:
        id_metrics = summary["metrics"].get(id_name, {})
        if id_metrics.get(key) is None:
            continue
        cells = [key, _with_ci(id_metrics.get(key), id_metrics.get(f"{key}_ci"))]
        if ood:
            ood_metrics, row = summary["metrics"].get(ood, {}), (summary["gap"] or {}).get(key, {})
            cells.append(_with_ci(ood_metrics.get(key), ood_metrics.get(f"{key}_ci")))
            cells.append(_with_ci(row.get("ood_worse_by"), row.get("ood_worse_by_ci"), signed=True))
        lines.append("| " + " | ".join(cells) + " |")
    if summary["majority"]:
        lines += ["", "majority baseline: " + ", ".join(f"{s} {v:.4f}" for s, v in summary["majority"].items())]
    return "\n".join(lines)


def _with_ci(value, ci, signed: bool = False) -> str:
    if value is None:
        return "—"
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return (
        f"{text} [{ci[0]:+.4f}, {ci[1]:+.4f}]"
        if ci and signed
        else (f"{text} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else text)
    )
