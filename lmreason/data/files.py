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
            reason = (str(exc).strip().splitlines() or [""])[0][:160]
            raise UserError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {reason})") from None
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
    """Every cell a string; blank lines skipped; a row with more or fewer fields than the header is an
    error naming its line (pandas would pad it silently, shifting nothing but hiding a broken export)."""
    kind = "CSV" if sep == "," else "TSV"
    csv.field_size_limit(2**31 - 1)  # a long text is data, not an error (the default limit is 128 KiB)
    # newline="": the csv module itself handles \n, \r\n, \r and newlines inside quoted fields.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, strict=True)
    rows, header, line = [], None, 1
    try:
        for row in reader:
            start, line = line, reader.line_num + 1  # a quoted field may span lines: report where the row starts
            if not row or (len(row) == 1 and not row[0].strip()):  # a blank line
                continue
            if header is None:
                header = [h.strip() for h in row]
                _check_header(path, header, sep)
            elif len(row) != len(header):
                raise UserError(
                    f"{path}: malformed {kind}: line {start} has {len(row)} field(s), "
                    f"the header has {len(header)}; every row needs {len(header)} "
                    f"(quote a text holding '{sep if sep == ',' else chr(92) + 't'}' with double quotes)"
                )
            else:
                rows.append(row)
    except csv.Error as exc:
        raise UserError(f"{path}: malformed {kind} near line {line} ({exc}); check its quotes") from None
    if header is None:
        raise UserError(f"{path}: the file is empty; give a file with a header row and data")
    return pd.DataFrame(rows, columns=header, dtype=object)


def _check_header(path: Path, header: list[str], sep: str) -> None:
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise UserError(
            f"{path}: the header repeats column {', '.join(map(repr, duplicates))}; give each column a unique name"
        )
    if any(not h for h in header):
        raise UserError(
            f"{path}: the header has an empty column name (column {header.index('') + 1}); name every column"
        )
    if len(header) == 1:
        other = next((d for d in (";", "\t", "|", ",") if d != sep and d in header[0]), None)
        if other is not None:
            name = {";": "semicolons", "\t": "tabs", "|": "pipes", ",": "commas"}[other]
            fix = (
                "save it as .tsv or set data.format=tsv"
                if other == "\t"
                else "save it with commas"
                if other != ","
                else "save it as .csv or set data.format=csv"
            )
            raise UserError(
                f"{path}: the header is one column {header[0][:60]!r} that holds {name}: wrong delimiter? {fix}"
            )


def _read_jsonl(path: Path, text: str) -> list:
    records = []
    # split("\n"), not splitlines(): that also splits at U+0085, U+2028, ... which JSON strings may hold raw.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line, object_pairs_hook=_unique_keys))
        except json.JSONDecodeError as exc:
            raise UserError(
                f"{path}: line {number} is not valid JSON ({exc.msg}); each line must be one JSON object"
            ) from None
        except _DuplicateKey as exc:
            raise UserError(f"{path}: line {number} has the key {exc.args[0]!r} twice; keep one") from None
        if not isinstance(records[-1], dict):
            kind = {
                "NoneType": "null",
                "list": "array",
                "str": "string",
                "int": "number",
                "float": "number",
                "bool": "boolean",
            }.get(type(records[-1]).__name__, type(records[-1]).__name__)
            raise UserError(f"{path}: line {number} is a JSON {kind}, not an object; each line must be one JSON object")
    return records


def _read_json(path: Path, text: str) -> list:
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except _DuplicateKey as exc:
        raise UserError(f"{path}: an object has the key {exc.args[0]!r} twice; keep one") from None
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of records (or an object holding one list of them)")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise UserError(f"{path}: expected a JSON list of objects, one per example")
    return data


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    """json's default keeps the last of two equal keys without a word; a duplicated column is an error here."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _DuplicateKey(next(k for k in keys if keys.count(k) > 1))
    return dict(pairs)


def _frame_from_records(path: Path, records: list) -> pd.DataFrame:
    if not records:
        raise UserError(f"{path}: no records; the file must hold at least one example")
    # dtype=object: values stay as written (a column of 1 and 2.5 must not turn 1 into 1.0).
    frame = pd.DataFrame(records, dtype=object)
    return frame.where(frame.notna(), None)
