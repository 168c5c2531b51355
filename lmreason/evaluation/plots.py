"""Confusion-matrix and reliability-diagram figures for evaluation reports.

matplotlib is imported inside the functions so ``import lmreason.evaluation.plots``
stays cheap for commands that never plot. Figures are built with the
object-oriented ``Figure`` API rather than pyplot: nothing is registered in
pyplot's global figure list, so a figure the caller never closes is freed like
any other object, and no GUI backend is ever touched (the Agg canvas does the
drawing). ``SummaryWriter.add_figure`` accepts these figures as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# Annotating every cell becomes unreadable past this many classes.
_MAX_ANNOTATED_CLASSES = 20


def _new_figure(width: float, height: float):
    """A Figure drawn by the Agg canvas (no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def confusion_figure(confusion: Sequence[Sequence[int]], label_names: Sequence[str], title: str):
    """Heatmap of a (C, C) confusion matrix, rows = true class, columns = predicted.

    Cells are coloured by the fraction of their true class (row-normalised) so a
    rare class's errors stay visible next to a frequent one; the text in each
    cell is the raw count (shown only when C <= 20).

    Raises:
        ValueError: if ``confusion`` is not (C, C) with C == len(label_names).
    """
    import numpy as np

    counts = np.asarray(confusion, dtype=np.int64)
    n_classes = len(label_names)
    if counts.shape != (n_classes, n_classes):
        raise ValueError(f"confusion must be ({n_classes}, {n_classes}) for {n_classes} labels; got {counts.shape}")
    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)

    # ~0.5 inch per class plus room for the labels, capped so 100 classes stay a sane size.
    side = min(4.0 + 0.5 * n_classes, 24.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")

    ticks = np.arange(n_classes)
    tick_size = 9 if n_classes <= 20 else max(4, 9 - n_classes // 20)
    ax.set_xticks(ticks, labels=label_names, rotation=45, ha="right", rotation_mode="anchor", fontsize=tick_size)
    ax.set_yticks(ticks, labels=label_names, fontsize=tick_size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)

    if n_classes <= _MAX_ANNOTATED_CLASSES:
        for i in range(n_classes):
            for j in range(n_classes):
                # White text on dark cells, black on light ones.
                colour = "white" if fractions[i, j] > 0.5 else "black"
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    return fig


def reliability_figure(bins: Sequence[dict], ece: float, title: str):
    """Reliability diagram: per-bin accuracy against confidence, with bin counts below.

    ``bins`` is the output of ``metrics.reliability_bins``; empty bins (accuracy
    None) are left blank. Bars under the diagonal mean overconfidence.
    """
    fig = _new_figure(5.0, 5.5)
    grid = fig.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    ax = fig.add_subplot(grid[0])
    ax_counts = fig.add_subplot(grid[1], sharex=ax)

    filled = [b for b in bins if b["count"]]
    lefts = [b["lo"] for b in filled]
    widths = [b["hi"] - b["lo"] for b in filled]
    ax.bar(
        lefts,
        [b["accuracy"] for b in filled],
        width=widths,
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.5,
        label="accuracy",
    )
    # Hatched red shows the gap between each bin's mean confidence and its accuracy.
    ax.bar(
        lefts,
        [b["confidence"] - b["accuracy"] for b in filled],
        width=widths,
        align="edge",
        bottom=[b["accuracy"] for b in filled],
        color="tab:red",
        alpha=0.3,
        hatch="//",
        edgecolor="tab:red",
        linewidth=0.5,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}  (ECE = {ece:.4f})")
    ax.legend(loc="upper left", fontsize=8)
    ax.tick_params(labelbottom=False)

    ax_counts.bar(lefts, [b["count"] for b in filled], width=widths, align="edge", color="grey")
    ax_counts.set_xlabel("confidence")
    ax_counts.set_ylabel("count")
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (120 dpi, tight bounding box), creating parent folders.

    The figure is left open: the caller may still log it (``add_figure`` closes it).
    Returns the path written.

    Raises:
        OSError: if the file cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def slice_figure(series: dict[str, dict[str, dict]], metric: str, column: str):
    """A metric per slice value with its bootstrap interval as error bars, one marker series per split
    (in-distribution and OOD on one axis). `series` is {split: {slice value: {metric, metric_ci, n}}}."""
    import numpy as np

    from lmreason.evaluation.metrics import slice_sort_key

    values = sorted({v for rows in series.values() for v in rows}, key=slice_sort_key)
    fig = _new_figure(max(4.5, 0.6 * len(values) + 2.5), 3.6)
    ax = fig.add_subplot()
    offsets = np.linspace(-0.12, 0.12, len(series)) if len(series) > 1 else [0.0]
    for (split, rows), offset in zip(series.items(), offsets):
        xs = [i + offset for i, v in enumerate(values) if v in rows and rows[v].get(metric) is not None]
        points = [rows[v] for v in values if v in rows and rows[v].get(metric) is not None]
        ys = [p[metric] for p in points]
        cis = [p.get(f"{metric}_ci") or [p[metric], p[metric]] for p in points]
        errors = [[y - lo for y, (lo, _) in zip(ys, cis)], [hi - y for y, (_, hi) in zip(ys, cis)]]
        ax.errorbar(xs, ys, yerr=errors, fmt="o-", capsize=4, label=split)
    ax.set_xticks(range(len(values)), labels=values)
    ax.set_xlabel(column)
    ax.set_ylabel(metric)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{metric} by {column} (bars: 95% bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def curves_figure(curves: dict[str, list[tuple[float, float]]], title: str):
    """Training curves: one panel per tag ({"train/loss": [(step, value), ...], "val/acc": ...})."""
    tags = list(curves)
    fig = _new_figure(4.0 * max(len(tags), 1), 3.2)
    for k, tag in enumerate(tags):
        ax = fig.add_subplot(1, len(tags), k + 1)
        steps, values = zip(*curves[tag]) if curves[tag] else ((), ())
        ax.plot(steps, values, marker="." if len(steps) < 30 else None)
        ax.set_title(tag)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_data_uri(fig) -> str:
    """The figure as an SVG data URI for an <img> (self-contained: no file next to the page, nothing fetched;
    each figure its own document, so matplotlib's element ids cannot clash between figures)."""
    import base64
    import io

    from matplotlib import rc_context

    buffer = io.BytesIO()
    with rc_context({"svg.hashsalt": "lmreason", "svg.fonttype": "path"}):  # same figure, same bytes
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
