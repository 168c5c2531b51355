"""The report's sections beyond the summary, each built from the files its diagnostic wrote.

Every builder returns a dict for the template: `ran` (were its files there), `how` (the command that
produces them, for a section whose diagnostic was not run), and its content, figures as data URIs.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from lmreason.evaluation.report_context import read_json

SHOWN_FLIPS = 8  # flipped examples per split
SHOWN_ATTRIBUTED = 5  # attributed errors and correct examples per split


def _how(run_hint: str, diagnostic: str) -> str:
    return f"lmreason evaluate {run_hint} 'diagnostics=[{diagnostic}]'"


def _jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    rows.append(json.loads(line))
                if limit is not None and len(rows) >= limit:
                    break
    except (OSError, ValueError):
        return rows
    return rows


def slices_section(summary: dict) -> dict:
    """Per slice column: a plot of the headline metric (and score for gen) with interval bars, ID and OOD on one
    axis, and the rows behind it."""
    from lmreason.evaluation.plots import figure_data_uri, slice_figure

    metric = "acc" if summary["task"] == "cls" else "exact_match"
    columns = {}
    for split in summary["splits"]:
        for column, rows in (summary["metrics"].get(split, {}).get("slices") or {}).items():
            columns.setdefault(column, {})[split] = rows
    figures = [
        {"column": col, "figure": figure_data_uri(slice_figure(series, metric, col)), "series": series}
        for col, series in columns.items()
    ]
    return {"ran": bool(figures), "metric": metric, "columns": figures}


def calibration_section(eval_dir: Path, summary: dict, run_hint: str) -> dict:
    """Reliability diagrams per split with ECE and its interval; before/after temperature scaling when
    eval/calibration.json (diagnostics=calibration) is there."""
    from lmreason.evaluation.plots import figure_data_uri, reliability_figure

    if summary["task"] != "cls":
        return {"applies": False}
    splits = []
    for split in summary["splits"]:
        m = summary["metrics"].get(split) or {}
        if m.get("reliability"):
            fig = figure_data_uri(reliability_figure(m["reliability"], m["ece"], f"{split}: reliability"))
            splits.append({"split": split, "ece": m["ece"], "ece_ci": m.get("ece_ci"), "figure": fig})
    fitted = read_json(Path(eval_dir) / "calibration.json")
    scaling = None
    if isinstance(fitted, dict) and fitted.get("splits"):
        scaling = {"temperature": fitted.get("temperature"), "fitted_on": fitted.get("fitted_on"), "splits": []}
        for split, row in fitted["splits"].items():
            figures = [
                figure_data_uri(reliability_figure(row[f"reliability_{when}"], row[f"ece_{when}"], f"{split}: {when}"))
                for when in ("before", "after")
                if row.get(f"reliability_{when}") and row.get(f"ece_{when}") is not None
            ]
            scaling["splits"].append({"split": split, **{k: row.get(k) for k in _SCALING_KEYS}, "figures": figures})
    return {"applies": True, "splits": splits, "scaling": scaling, "how": _how(run_hint, "calibration")}


_SCALING_KEYS = ("ece_before", "ece_after", "nll_before", "nll_after")


def changed_words(original: str, perturbed: str) -> list[dict]:
    """The perturbed text as word segments by a word-level diff: {"text", "kind"} with kind "same", "added"
    (new words) or "removed" (words of the original dropped), for the template to mark."""
    old, new = original.split(), perturbed.split()
    segments = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if op == "equal":
            segments.append({"text": " ".join(old[i1:i2]), "kind": "same"})
            continue
        if i2 > i1:
            segments.append({"text": " ".join(old[i1:i2]), "kind": "removed"})
        if j2 > j1:
            segments.append({"text": " ".join(new[j1:j2]), "kind": "added"})
    return segments


def robustness_section(eval_dir: Path, splits: list[str], run_hint: str) -> dict:
    """Per split: the tests table worst first (failure rate), the attack, and flipped examples highlighted."""
    found = []
    for split in splits:
        payload = read_json(Path(eval_dir) / split / "robustness.json")
        if not isinstance(payload, dict):
            continue
        tests = [{"name": k, **v} for k, v in payload.get("tests", {}).items() if v.get("applicable")]
        tests.sort(key=lambda t: -(t.get("failure_rate") or 0.0))
        flips = [
            {**rec, "segments": changed_words(rec.get("original", ""), rec.get("perturbed", ""))}
            for rec in _jsonl(Path(eval_dir) / split / "robustness.jsonl", SHOWN_FLIPS)
        ]
        found.append(
            {
                "split": split,
                "clean": payload.get("clean_acc", payload.get("clean_exact_match")),
                "tests": tests,
                "skipped": payload.get("skipped") or [],
                "attack": payload.get("attack"),
                "flips": flips,
            }
        )
    return {"ran": bool(found), "splits": found, "how": _how(run_hint, "robustness")}


def _coloured(words: list[str], scores: list[float]) -> list[dict]:
    """Words with a background strength in [0, 1] of |score| / max |score|; sign: toward the label or against."""
    top = max((abs(s) for s in scores), default=0.0) or 1.0
    return [{"word": w, "alpha": round(abs(s) / top, 3), "toward": s >= 0} for w, s in zip(words, scores)]


def attribution_section(eval_dir: Path, splits: list[str], run_hint: str) -> dict:
    """Per split: faithfulness against random words, the sanity check, the shortcut table and coloured examples."""
    found = []
    for split in splits:
        payload = read_json(Path(eval_dir) / split / "attribution.json")
        if not isinstance(payload, dict):
            continue
        records = _jsonl(Path(eval_dir) / split / "attributions.jsonl")
        examples = {}
        for group in ("error", "correct"):
            chosen = [r for r in records if r.get("group") == group][:SHOWN_ATTRIBUTED]
            examples[group] = [
                {**r, "coloured": _coloured(r.get("words") or [], r.get("scores") or [])} for r in chosen
            ]
        shortcuts = [
            {"label": label, **row} for label, rows in (payload.get("leaned_on") or {}).items() for row in rows
        ]
        found.append(
            {
                "split": split,
                "method": payload.get("method"),
                "faithfulness": payload.get("faithfulness"),
                "sanity": payload.get("sanity_check"),
                "shortcuts": shortcuts,
                "examples": examples,
            }
        )
    return {"ran": bool(found), "splits": found, "how": _how(run_hint, "attribution")}


def classes_section(summary: dict) -> dict:
    """Confusion matrix figure and per-class table of each split (task=cls)."""
    from lmreason.evaluation.plots import confusion_figure, figure_data_uri

    if summary["task"] != "cls":
        return {"applies": False}
    splits = []
    for split in summary["splits"]:
        m = summary["metrics"].get(split) or {}
        if m.get("confusion") and m.get("label_names"):
            fig = figure_data_uri(confusion_figure(m["confusion"], m["label_names"], f"{split}: confusion matrix"))
            splits.append({"split": split, "figure": fig, "per_class": m.get("per_class") or {}})
    return {"applies": True, "splits": splits}


def training_curves(run_dir: Path | None) -> dict[str, list[tuple[float, float]]]:
    """{tag: [(step, value)]} for train/loss and the val/ metrics: from the run's TensorBoard events, else the
    validation history in its metrics.json."""
    if run_dir is None:
        return {}
    curves = {}
    tb = Path(run_dir) / "tb"
    if tb.is_dir():
        import logging

        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        logging.getLogger("tensorboard").setLevel(logging.WARNING)  # not a line per events file on the terminal
        events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags().get("scalars", []):
            if tag == "train/loss" or (tag.startswith("val/") and not tag.endswith("_best")):
                curves[tag] = sorted((e.step, e.value) for e in events.Scalars(tag))
    if not curves:
        history = (read_json(Path(run_dir) / "metrics.json") or {}).get("history") or []
        for row in history:
            for tag, value in row.items():
                if tag.startswith("val/") and not tag.endswith("_best") and isinstance(value, (int, float)):
                    curves.setdefault(tag, []).append((row.get("step", 0), value))
    return curves


def curves_section(run_dir: Path | None) -> dict:
    from lmreason.evaluation.plots import curves_figure, figure_data_uri

    curves = training_curves(run_dir)
    if not curves:
        return {"ran": False}
    order = sorted(curves, key=lambda t: (t != "train/loss", t))
    return {"ran": True, "figure": figure_data_uri(curves_figure({t: curves[t] for t in order}, "training"))}
