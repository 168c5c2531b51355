"""Files an evaluation writes: JSON and JSONL records (atomically) and figures."""

from __future__ import annotations

import json
from pathlib import Path

from lmreason.atomic import atomic_write, atomic_write_json
from lmreason.errors import UserError


def write_json(path: Path, payload: dict) -> None:
    """`payload` as indented JSON at `path`, atomically.

    Raises:
        UserError: the file cannot be written.
    """
    _write(path, lambda: atomic_write_json(path, payload))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, atomically.

    Raises:
        UserError: the file cannot be written (read-only dir, disk full, ...).
    """
    text = "".join(json.dumps(row, ensure_ascii=False, default=float) + "\n" for row in rows)
    _write(path, lambda: atomic_write(path, text))


def write_text(path: Path, text: str) -> None:
    """`text` at `path` (a page, a table), atomically.

    Raises:
        UserError: the file cannot be written.
    """
    _write(path, lambda: atomic_write(path, text))


def _write(path: Path, write) -> None:
    try:
        write()
    except OSError as exc:
        raise UserError(f"{path}: cannot write it ({exc.strerror or exc}); choose a writable location") from None


def save_classification_figures(metrics: dict, label_names: list[str], split: str, out_dir: Path) -> None:
    """confusion_matrix.png and reliability.png of one split."""
    from lmreason.evaluation.plots import confusion_figure, reliability_figure, save_figure

    save_figure(
        confusion_figure(metrics["confusion"], label_names, f"{split}: confusion matrix"),
        out_dir / "confusion_matrix.png",
    )
    save_figure(
        reliability_figure(metrics["reliability"], metrics["ece"], f"{split}: reliability"), out_dir / "reliability.png"
    )


def head_prefix(run_dir: Path, out_root: Path) -> str:
    """The TensorBoard key prefix of what is evaluated into `out_root`: "" for the run's own `eval/`,
    "<head>/" for a multi-task head's `eval/<head>/`, so two heads' `test/acc` stay apart."""
    try:
        relative = Path(out_root).relative_to(Path(run_dir) / "eval").as_posix()
    except ValueError:  # written elsewhere than the run's eval/
        return ""
    return "" if relative in (".", "") else f"{relative}/"


def log_to_tensorboard(run_dir: Path, results: dict, summary_text: str | None = None, prefix: str = "") -> None:
    """Each split's headline metrics (step 0) and figures into the run's TensorBoard events; `summary_text`
    (the report's summary as Markdown: the text plugin renders Markdown tables, not HTML) as `report/summary`
    (`prefix`: `head_prefix`, before every key, so heads' `test/acc` stay apart as `<head>/test/acc`)."""
    from torch.utils.tensorboard import SummaryWriter

    from lmreason.evaluation.plots import confusion_figure, reliability_figure

    writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
    _log_attribution(writer, results, prefix)
    for name, metrics in results.items():
        if name in ("gap", "attribution", "attribution_flips", "robustness", "calibration") or not isinstance(
            metrics, dict
        ):
            continue
        split = f"{prefix}{name}"
        for key in ("acc", "f1_macro", "ece", "loss", "exact_match", "perplexity"):
            if isinstance(metrics.get(key), (int, float)):
                writer.add_scalar(f"{split}/{key}", metrics[key], 0)
        if "confusion" in metrics:
            writer.add_figure(
                f"{split}/confusion_matrix",
                confusion_figure(metrics["confusion"], metrics["label_names"], f"{split} confusion"),
            )
        if "reliability" in metrics:
            writer.add_figure(
                f"{split}/reliability",
                reliability_figure(metrics["reliability"], metrics["ece"], f"{split} reliability"),
            )
    if summary_text:
        writer.add_text(f"{prefix}report/summary", summary_text, 0)
    writer.close()


ATTRIBUTION_SCALARS = (
    ("faithfulness", ("comprehensiveness", "random_comprehensiveness", "sufficiency", "random_sufficiency")),
    ("sanity_check", ("rank_correlation",)),
    ("delta", ("mean_relative",)),
)


def _log_attribution(writer, results: dict, prefix: str = "") -> None:
    """[<head>/]attribution/<split>/<figure> (faithfulness vs random, the sanity check's rank correlation, relative
    delta) and [<head>/]attribution_flips/<test>/<split>/<figure> scalars (step 0)."""
    for split, payload in (results.get("attribution") or {}).items():
        for group, figures in ATTRIBUTION_SCALARS:
            section = payload.get(group) or {}
            for figure in figures:
                if isinstance(section.get(figure), (int, float)):
                    writer.add_scalar(f"{prefix}attribution/{split}/{figure}", section[figure], 0)
    for split, payload in (results.get("attribution_flips") or {}).items():
        for key, t in payload.get("tests", {}).items():
            for figure in ("changed_mass", "changed_share", "top_changed"):
                writer.add_scalar(f"{prefix}attribution_flips/{key}/{split}/{figure}", t[figure], 0)
