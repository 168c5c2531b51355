"""Turn raw split frames into validated examples with canonical column names.

Classification examples have `text`, optional `text_pair`, `label` (a string);
generation examples have `prompt`, `completion`. Metadata columns (difficulty,
source, ...) ride along for per-slice metrics. Every problem is a UserError that
names the file or split, the row and the column, and what to do.
"""

from __future__ import annotations

import math

import pandas as pd
from omegaconf import DictConfig

from lmreason.errors import UserError

CLS_COLUMNS = ("text", "text_pair", "label")
GEN_COLUMNS = ("prompt", "completion")


def _missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def label_to_string(value) -> str:
    """One spelling per label whatever the file's types: 1, 1.0 and "1" are all "1"."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _require_column(frame: pd.DataFrame, column: str, key: str, where: str) -> None:
    if column not in frame.columns:
        # repr for odd names (a newline in a header cell must not break the one-line message)
        columns = ", ".join(str(c) if str(c).isprintable() else repr(str(c)) for c in frame.columns) or "none"
        raise UserError(f"{where}: no column '{column}' ({key}); its columns are: {columns}; set {key}=<one of them>")


def _check_filled(frame: pd.DataFrame, column: str, key: str, where: str, what: str) -> None:
    for row, value in enumerate(frame[column].tolist(), start=1):
        if _missing(value):
            raise UserError(
                f"{where}: row {row} has an empty {what} in column '{column}' ({key}); fill or remove that row"
            )


def _check_plain(frame: pd.DataFrame, column: str, key: str, where: str, what: str, is_label: bool) -> None:
    """Texts and labels are strings or numbers: not JSON lists/objects, and a label is never NaN/inf."""
    for row, value in enumerate(frame[column].tolist(), start=1):
        if isinstance(value, (dict, list, tuple)):
            kind = "an object" if isinstance(value, dict) else "a list"
            raise UserError(
                f"{where}: row {row} has {kind} as its {what} in column '{column}' ({key}); "
                "give a plain string or number"
            )
        if is_label and (
            (isinstance(value, float) and not math.isfinite(value))
            or (isinstance(value, str) and value.strip().lower() == "nan")
        ):
            raise UserError(
                f"{where}: row {row} has the label {value!r} in column '{column}' ({key}): NaN/inf is a missing "
                "or broken number, not a label; fill or remove that row"
            )


def _metadata_columns(frame: pd.DataFrame, data_cfg: DictConfig, canonical: set[str], where: str) -> list[str]:
    requested = list(data_cfg.metadata_columns)
    for column in requested:
        _require_column(frame, column, "data.metadata_columns", where)
    if data_cfg.source in ("reasoning", "bigbench"):
        # Generated sources: every extra column is metadata (difficulty fields, ...).
        requested += [c for c in frame.columns if c not in canonical and c not in requested]
    return requested


def normalize_split(frame: pd.DataFrame, data_cfg: DictConfig, mode: str, where: str) -> pd.DataFrame:
    """Rename the configured columns to canonical ones and validate every row.

    Raises:
        UserError: an empty split, a missing column, an empty text/label/prompt/completion.
    """
    if len(frame) == 0:
        raise UserError(f"{where}: the split is empty; every split needs at least one example")
    if mode == "cls":
        columns = {
            "text": (data_cfg.text_column, "data.text_column", "text"),
            "label": (data_cfg.label_column, "data.label_column", "label"),
        }
        if data_cfg.text_pair_column:
            columns["text_pair"] = (data_cfg.text_pair_column, "data.text_pair_column", "text")
    else:
        frame = _instruction_to_prompt(frame, data_cfg)
        columns = {
            "prompt": (data_cfg.prompt_column, "data.prompt_column", "prompt"),
            "completion": (data_cfg.completion_column, "data.completion_column", "completion"),
        }
    out = {}
    for canonical, (column, key, what) in columns.items():
        _require_column(frame, column, key, where)
        _check_filled(frame, column, key, where, what)
        _check_plain(frame, column, key, where, what, is_label=canonical == "label")
        values = frame[column].tolist()
        out[canonical] = [label_to_string(v) for v in values] if canonical == "label" else [str(v) for v in values]
    source_columns = {spec[0] for spec in columns.values()}
    for column in _metadata_columns(frame, data_cfg, set(columns) | source_columns, where):
        out[column] = _arrow_friendly(frame[column].tolist())
    return pd.DataFrame(out)


def _instruction_to_prompt(frame: pd.DataFrame, data_cfg: DictConfig) -> pd.DataFrame:
    """Alpaca-style instruction/input/output columns become prompt/completion."""
    if data_cfg.prompt_column in frame.columns or not {"instruction", "output"} <= set(frame.columns):
        return frame
    frame = frame.copy()
    inputs = frame["input"].tolist() if "input" in frame.columns else [None] * len(frame)
    frame[data_cfg.prompt_column] = [
        f"{ins}\n\n{inp}" if not _missing(inp) else str(ins) for ins, inp in zip(frame["instruction"].tolist(), inputs)
    ]
    frame[data_cfg.completion_column] = frame["output"].tolist()
    return frame


def _arrow_friendly(values: list) -> list:
    """Metadata of mixed types (ints and strings) cannot share an Arrow column: use strings then."""
    kinds = {type(v) for v in values if v is not None}
    if (len(kinds) <= 1 or kinds <= {int, float}) and not kinds & {dict, list}:
        return values
    return [None if v is None else str(v) for v in values]


def check_label_sets(splits: dict[str, pd.DataFrame], origin: str) -> list[str]:
    """Labels of the training split, in a stable order; evaluation splits may not add new ones.

    Raises:
        UserError: an evaluation split holds a label the training split never shows.
    """
    train_labels = set(splits["train"]["label"])
    for name, frame in splits.items():
        if name == "train":
            continue
        for row, label in enumerate(frame["label"].tolist(), start=1):
            if label not in train_labels:
                raise UserError(
                    f"{origin}: split '{name}' row {row} has label {label!r}, which the training split never has; "
                    "evaluation labels must be a subset of the training labels (fix the label or add training examples)"
                )
    if len(train_labels) < 2:
        raise UserError(
            f"{origin}: the training split has a single label ({next(iter(train_labels))!r}); "
            "classification needs at least two"
        )
    return sort_labels(train_labels)


def sort_labels(labels) -> list[str]:
    """Numeric labels in numeric order ("2" before "10"), others alphabetically."""
    labels = list(labels)
    try:
        return sorted(labels, key=float)
    except ValueError:
        return sorted(labels)
