"""eval/report.html: the reasoning report of one evaluation, one self-contained file.

Jinja2 templates (lmreason/evaluation/templates/, package data) with inline CSS; figures are the
existing matplotlib figures embedded as SVG data URIs; no script, font or image is fetched, so the
page opens from disk with no network and prints. `write_run_report` is called by every
`lmreason evaluate run=...` (and checkpoint=...), after the diagnostics it was asked for.
"""

from __future__ import annotations

from pathlib import Path

from lmreason.evaluation import report_sections as sections
from lmreason.evaluation.report_context import run_summary
from lmreason.evaluation.statistics import CONFIDENCE, N_RESAMPLES


def environment():
    """The Jinja2 environment over the packaged templates, HTML-escaping every value."""
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=PackageLoader("lmreason.evaluation", "templates"),
        autoescape=select_autoescape(["html", "j2"], default=True),
        undefined=StrictUndefined,  # a misspelt field fails the render (and its test), not a blank cell
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v, d=4: "—" if v is None else f"{v:.{d}f}"
    env.filters["pct"] = lambda v: "—" if v is None else f"{v:.1%}"
    env.filters["ci"] = lambda ci, d=4: "" if not ci else f"[{ci[0]:.{d}f}, {ci[1]:.{d}f}]"
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(confidence=CONFIDENCE, n_resamples=N_RESAMPLES, **context)


def run_report_context(
    eval_dir: Path, run_dir: Path | None, splits: list[str], config: dict | None, task: str, about: str | None = None
) -> dict:
    """Everything the page shows; `config` is the run's saved config (a plain dict) or None, `about` what the
    OOD split is."""
    hint = f"run={run_dir}" if run_dir is not None else "checkpoint=<model dir> data=..."
    summary = run_summary(eval_dir, splits, config, task, about)
    return {
        "title": f"lmreason report: {run_dir or eval_dir}",
        "summary": summary,
        "slices": sections.slices_section(summary),
        "calibration": sections.calibration_section(eval_dir, summary, hint),
        "robustness": sections.robustness_section(eval_dir, splits, hint),
        "attribution": sections.attribution_section(eval_dir, splits, hint)
        if task == "cls"
        else {"ran": False, "applies": False},
        "classes": sections.classes_section(summary),
        "curves": sections.curves_section(run_dir),
        "run_hint": hint,
    }


def write_run_report(
    eval_dir: Path, run_dir: Path | None, splits: list[str], config: dict | None, task: str, about: str | None = None
) -> Path:
    """Render eval/report.html (atomically); returns its path.

    Raises:
        UserError: the file cannot be written.
    """
    from lmreason.evaluation.outputs import write_text

    path = Path(eval_dir) / "report.html"
    write_text(path, render("report.html.j2", **run_report_context(eval_dir, run_dir, splits, config, task, about)))
    return path
