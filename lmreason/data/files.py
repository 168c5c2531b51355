"""Read tabular files (CSV, TSV, JSON, JSONL, Parquet) into string-typed pandas frames.

Every failure is a UserError naming the file, the line or row, and the fix:
users feed messy files, and a traceback from pandas tells them nothing.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pandas as pd

from lmreason.errors import UserError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".txt": "txt"}
TABULAR_FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")


def detect_format(path: Path, fmt: str | None = None, allowed=TABULAR_FORMATS) -> str:
    fmt = (fmt or FORMATS.get(path.suffix.lower(), "")).lower()
    if fmt not in allowed:
        raise UserError(
            f"{path}: cannot tell the file format from '{path.suffix}'; use one of "
            f"{', '.join('.' + f for f in allowed)} or set data.format"
        )
    return fmt


def read_text(path: Path) -> str:
    """The file decoded as UTF-8 (a BOM is dropped); names the line of the first bad byte."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); re-save the file as UTF-8"
        ) from None


def read_table(path: str | Path, fmt: str | None = None) -> pd.DataFrame:
    """Read one file into a DataFrame whose cells are python objects (str for CSV/TSV).

    Raises:
        UserError: missing, empty or malformed file, bad encoding, duplicated headers.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check data.path")
    fmt = detect_format(path, fmt)
    if fmt == "parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises many types for a corrupt file
            raise UserError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc})") from None
        return frame.astype(object).where(frame.notna(), None)
    text = read_text(path)
    if not text.strip():
        raise UserError(f"{path}: the file is empty; give a file with a header row and data")
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, text, "," if fmt == "csv" else "\t")
    if fmt == "jsonl":
        return _frame_from_records(path, _read_jsonl(path, text))
    return _frame_from_records(path, _read_json(path, text))


def _read_delimited(path: Path, text: str, sep: str) -> pd.DataFrame:
    header = next(csv.reader(io.StringIO(text), delimiter=sep))
    header = [h.strip() for h in header]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise UserError(f"{path}: the header repeats column {', '.join(map(repr, duplicates))}; give each column a unique name")
    if any(not h for h in header):
        raise UserError(f"{path}: the header has an empty column name (column {header.index('') + 1}); name every column")
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=sep, dtype=str, keep_default_na=False, na_filter=False, engine="c"
        )
    except pd.errors.ParserError as exc:
        raise UserError(f"{path}: malformed {'CSV' if sep == ',' else 'TSV'} ({str(exc).strip()}); every row needs {len(header)} fields") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _read_jsonl(path: Path, text: str) -> list:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {number} is not valid JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(records[-1], dict):
            raise UserError(f"{path}: line {number} is a JSON {type(records[-1]).__name__}, not an object; each line must be one JSON object")
    return records


def _read_json(path: Path, text: str) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of records (or an object holding one list of them)")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(f"{path}: expected a JSON list of objects, one per example")
    return data


def _frame_from_records(path: Path, records: list) -> pd.DataFrame:
    if not records:
        raise UserError(f"{path}: no records; the file must hold at least one example")
    frame = pd.DataFrame.from_records(records)
    return frame.astype(object).where(frame.notna(), None)
