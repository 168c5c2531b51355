"""Rich tables for the terminal report: one split's metrics, slices, and the ID-vs-OOD gap."""

from __future__ import annotations

from collections.abc import Mapping

from rich.table import Table


def _fmt(value, digits: int = 4) -> str:
    """Fixed-point number, or an em dash for a missing value."""
    return "—" if value is None else f"{value:.{digits}f}"


def metrics_table(metrics: Mapping, title: str) -> Table:
    """Per-class precision/recall/F1/support rows, a macro row, and the headline numbers as caption.

    ``metrics`` is the dict from ``metrics.classification_metrics``.
    """
    caption = (
        f"n={metrics['n']}  acc={_fmt(metrics['acc'])}  f1_macro={_fmt(metrics['f1_macro'])}  "
        f"ece={_fmt(metrics['ece'])}  loss={_fmt(metrics['loss'])}  "
        f"majority={_fmt(metrics['majority_baseline'])}"
    )
    table = Table(title=title, caption=caption, caption_justify="left", title_justify="left")
    table.add_column("class", style="bold")
    for name in ("precision", "recall", "f1"):
        table.add_column(name, justify="right")
    table.add_column("support", justify="right")

    per_class = metrics["per_class"]
    for name, row in per_class.items():
        # Dim classes absent from this split: their zeros are "undefined", not "wrong".
        style = "dim" if row["support"] == 0 else None
        table.add_row(
            name,
            _fmt(row["precision"], 3),
            _fmt(row["recall"], 3),
            _fmt(row["f1"], 3),
            str(row["support"]),
            style=style,
        )
    count = max(len(per_class), 1)
    table.add_section()
    table.add_row(
        "macro avg",
        _fmt(sum(r["precision"] for r in per_class.values()) / count, 3),
        _fmt(sum(r["recall"] for r in per_class.values()) / count, 3),
        _fmt(metrics["f1_macro"], 3),
        str(metrics["n"]),
        style="italic",
    )
    return table


def slices_table(slices: Mapping[str, Mapping], column: str) -> Table:
    """One row per slice value (as ordered by ``metrics.slice_metrics``): n, acc, f1_macro, ece.

    f1_macro is blank (—) for a slice whose gold labels are all one class: read its accuracy.
    """
    single = any(row.get("f1_macro") is None for row in slices.values())
    caption = "— f1_macro: the slice holds one class; read acc" if single else None
    table = Table(title=f"by {column}", title_justify="left", caption=caption, caption_justify="left")
    table.add_column(column, style="bold")
    table.add_column("n", justify="right")
    for name in ("acc", "f1_macro", "ece"):
        table.add_column(name, justify="right")
    for key, row in slices.items():
        table.add_row(key, str(row["n"]), _fmt(row["acc"]), _fmt(row["f1_macro"]), _fmt(row["ece"]))
    return table


def generation_table(metrics: Mapping, title: str) -> Table:
    """task=gen headline numbers for one split (the dict of ``GenerationTask.evaluate_split``)."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("exact match", _fmt(metrics["exact_match"]))
    table.add_row(f"mean score ({metrics['scorer']})", _fmt(metrics["score"]))
    table.add_row("loss (per completion token)", _fmt(metrics["loss"]))
    table.add_row("perplexity", _fmt(metrics["perplexity"], 3))
    table.add_row("cut at max_new_tokens", f"{metrics['unfinished']:.1%}")
    return table


def generation_slices_table(slices: Mapping[str, Mapping], column: str) -> Table:
    """One row per slice value: n, exact match, mean score."""
    table = Table(title=f"by {column}", title_justify="left")
    table.add_column(column, style="bold")
    for name in ("n", "exact_match", "score"):
        table.add_column(name, justify="right")
    for key, row in slices.items():
        table.add_row(key, str(row["n"]), _fmt(row["exact_match"]), _fmt(row["score"]))
    return table


def gap_rich_table(
    gap: Mapping[str, Mapping], id_name: str = "test", ood_name: str = "ood", about: str | None = None
) -> Table:
    """Metric, in-distribution, OOD and "OOD worse by" columns from ``metrics.gap_table``.

    "OOD worse by" has one sign for every metric: positive (red) = OOD is worse — lower
    accuracy/F1/score, higher ECE/loss/perplexity —, negative (green) = OOD is better.
    ``about``: what the OOD split is (a caption). Rows with an ``ood_worse_by_ci`` (bootstrap, both splits
    resampled) show it; a difference whose interval contains 0 reads "within noise".
    """
    table = Table(title="in-distribution vs OOD", title_justify="left", caption=about, caption_justify="left")
    table.add_column("metric", style="bold")
    table.add_column(f"in-distribution ({id_name})", justify="right")
    table.add_column(f"OOD ({ood_name})", justify="right")
    table.add_column("OOD worse by", justify="right")
    with_ci = any(row.get("ood_worse_by_ci") for row in gap.values())
    if with_ci:
        table.add_column("95% CI", justify="right")
    table.add_column("reading")
    for key, row in gap.items():
        value = row.get("ood_worse_by")
        text, reading = "—", ""
        if value is not None:
            text = f"{value:+.4f}"
            if value:  # exactly 0 stays uncoloured
                colour = "red" if value > 0 else "green"
                text = f"[{colour}]{text}[/]"
                reading = f"[{colour}]{'OOD worse' if value > 0 else 'OOD better'}[/]"
            else:
                reading = "equal"
        ci = row.get("ood_worse_by_ci")
        if ci is not None and value:
            real = ci[0] > 0 or ci[1] < 0
            reading += "" if real else " [dim](within noise: CI contains 0)[/]"
        cells = [_fmt(row["in_distribution"]), _fmt(row["ood"]), text]
        cells += [f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "—"] if with_ci else []
        table.add_row(key, *cells, reading)
    return table


MAX_SHOWN = 200  # rows of predictions shown on the terminal; output=<file.jsonl> holds all


def predictions_table(predictions: list[dict], top_k: int = 0) -> Table:
    """`infer` on a classifier: text, label and the (top_k) class probabilities per input."""
    table = Table(title=f"{len(predictions)} prediction(s)", title_justify="left")
    table.add_column("text", overflow="fold", max_width=70)
    table.add_column("label")
    table.add_column("probabilities")
    for row in predictions[:MAX_SHOWN]:
        ranked = sorted(row["probs"].items(), key=lambda kv: -kv[1])
        if top_k:
            ranked = ranked[:top_k]
        table.add_row(row["text"], row["label"], ", ".join(f"{k} {v:.3f}" for k, v in ranked[:6]))
    return table


def generations_table(predictions: list[dict]) -> Table:
    """`infer` on a generation model: prompt and generated answer per input."""
    table = Table(title=f"{len(predictions)} generation(s)", title_justify="left")
    table.add_column("prompt", overflow="fold", max_width=60)
    table.add_column("generated", overflow="fold", max_width=60)
    for row in predictions[:MAX_SHOWN]:
        table.add_row(row["text"], row["generated"])
    return table
