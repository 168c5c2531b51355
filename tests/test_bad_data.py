"""Malformed data files, generated: `prepare`'s reading and validation either gives the right rows or
one clear UserError line naming the file, and never another exception.

A case is a table (texts, labels of mixed types) written in one format with one defect (or none).
The defect decides the expected outcome: the exact rows back, or a UserError. The in-process test
drives `read_table` + `normalize_split` (what `prepare` runs on every file) for hundreds of cases;
a few `prepare` runs (in-process) check the same files end the command with that one line.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from conftest import run_command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from lmreason.data.examples import label_to_string, normalize_split
from lmreason.data.files import read_table
from lmreason.errors import UserError

EXAMPLES_PER_DEFECT = 20  # x 24 kinds of defect (one test each): ~480 generated files
TRIED: Counter = Counter()  # (format, defect, outcome) -> cases: reported by the test

OK_DEFECTS = ("none", "bom", "crlf", "extra_column", "blank_lines", "huge_text", "json_wrapped")
ERROR_DEFECTS = (
    "ragged_short",
    "ragged_long",
    "duplicate_header",
    "no_header",
    "missing_label_column",
    "wrong_delimiter",
    "empty",
    "header_only",
    "bad_encoding",
    "nan_label",
    "unclosed_quote",
    "not_json_line",
    "non_object_line",
    "list_label",
    "empty_label",
    "duplicate_key",
    "garbage",
)
FORMATS = ("csv", "tsv", "json", "jsonl", "parquet")
# Defects that only make sense for some formats.
ONLY = {
    "ragged_short": ("csv", "tsv"),
    "ragged_long": ("csv", "tsv"),
    "duplicate_header": ("csv", "tsv"),
    "no_header": ("csv", "tsv"),
    "wrong_delimiter": ("csv", "tsv"),
    "header_only": ("csv", "tsv"),
    "unclosed_quote": ("csv", "tsv"),
    "crlf": ("csv", "tsv", "jsonl"),
    "blank_lines": ("csv", "tsv", "jsonl"),
    "not_json_line": ("jsonl",),
    "non_object_line": ("jsonl",),
    "json_wrapped": ("json",),
    "list_label": ("json", "jsonl"),
    "duplicate_key": ("json", "jsonl"),
    "garbage": ("parquet", "json"),
    "bom": ("csv", "tsv", "json", "jsonl"),
    "bad_encoding": ("csv", "tsv", "json", "jsonl"),
    "empty": ("csv", "tsv", "json", "jsonl"),
}
PARQUET_DEFECTS = ("none", "extra_column", "huge_text", "nan_label", "missing_label_column", "empty_label", "garbage")

# Texts: letters, digits, punctuation that CSV must quote, quotes, newlines, tabs, non-ASCII, the JSON
# line separators (U+2028/9) that str.splitlines() would split on. At least one visible character.
TEXT_CHARS = st.sampled_from(list("abcXYZ 019,;|\"'\t\n\r\\{}[]:é中🙂\u2028\u2029\x85"))
texts = st.text(TEXT_CHARS, min_size=1, max_size=20).filter(lambda t: t.strip() and t.strip() not in ("text", "label"))
# Labels of mixed types, as JSON holds them; CSV writes them as strings.
labels = st.sampled_from([0, 1, 2, "pos", "neg", "1", 1.0, 2.0, True, False, " spaced "])


@st.composite
def cases(draw, defect: str):
    fmt = draw(st.sampled_from([f for f in ONLY.get(defect, FORMATS) if f != "parquet" or defect in PARQUET_DEFECTS]))
    n = draw(st.integers(1, 6))
    rows = [{"text": draw(texts), "label": draw(labels)} for _ in range(n)]
    if defect == "huge_text":
        rows[draw(st.integers(0, n - 1))]["text"] = "word " * draw(st.integers(30_000, 220_000))  # 150 KB..1.1 MB
    if defect == "extra_column":
        for row in rows:
            row["topic"] = draw(st.sampled_from([1, "a", 2.5, None, True]))
    if defect == "unclosed_quote" and any(set(r["text"]) & set('"\r\n') for r in rows):
        defect = "none"  # a stray quote could pair with a quote the writer put in: keep the defect unambiguous
    return fmt, defect, rows, draw(st.integers(0, n - 1))


def expected_rows(fmt: str, rows: list[dict]) -> tuple[list[str], list[str]]:
    """What normalize_split must return: texts as written, labels in their one canonical spelling."""
    if fmt in ("csv", "tsv"):  # every cell is a string there
        return [r["text"] for r in rows], [csv_cell(r["label"]).strip() for r in rows]
    return [str(r["text"]) for r in rows], [label_to_string(r["label"]) for r in rows]


def csv_cell(value) -> str:
    return "" if value is None else str(value)


def serialize(fmt: str, defect: str, rows: list[dict], at: int) -> bytes:
    """The file's bytes: `rows` in `fmt`, with `defect` applied at row `at`."""
    if defect == "empty":
        return b"" if at % 2 else b" \n\n"
    if fmt == "parquet":
        return parquet_bytes(defect, rows, at)
    if fmt in ("csv", "tsv"):
        return delimited_bytes(fmt, defect, rows, at)
    return json_bytes(fmt, defect, rows, at)


def delimited_bytes(fmt: str, defect: str, rows: list[dict], at: int) -> bytes:
    sep = "," if fmt == "csv" else "\t"
    if defect == "wrong_delimiter":
        sep = ";" if at % 2 else ("\t" if fmt == "csv" else ",")
    columns = list(rows[0])
    header = list(columns)
    if defect == "duplicate_header":
        header = header + ["text"]
    if defect == "missing_label_column":
        header = [("lable" if c == "label" else c) for c in header]
    cells = [[csv_cell(r[c]) for c in columns] for r in rows]
    if defect == "duplicate_header":
        cells = [row + ["again"] for row in cells]
    if defect == "nan_label":
        cells[at][columns.index("label")] = ["NaN", "nan", " NAN "][at % 3]
    if defect == "empty_label":
        cells[at][columns.index("label")] = " "
    if defect == "ragged_short":
        cells[at] = cells[at][:-1]
    if defect == "ragged_long":
        cells[at] = cells[at] + ["surplus"]
    out = io.StringIO()
    # Python's writer leaves a bare \r unquoted under a "\n" terminator (any reader then splits the row there).
    quoting = csv.QUOTE_ALL if any("\r" in cell for row in cells for cell in row) else csv.QUOTE_MINIMAL
    writer = csv.writer(out, delimiter=sep, lineterminator="\r\n" if defect == "crlf" else "\n", quoting=quoting)
    if defect != "no_header":
        writer.writerow(header)
    for number, row in enumerate(cells if defect != "header_only" else []):
        writer.writerow(row)
        if defect == "blank_lines" and number == at:
            out.write("\n\n")
    text = out.getvalue()
    if defect == "unclosed_quote":
        lines = text.split("\n")
        lines[1 + at] = '"' + lines[1 + at]
        text = "\n".join(lines)
    return encode(text, defect)


def json_bytes(fmt: str, defect: str, rows: list[dict], at: int) -> bytes:
    rows = [dict(r) for r in rows]
    if defect == "nan_label":
        rows[at]["label"] = [math.nan, math.inf, "NaN"][at % 3]
    if defect == "empty_label":
        rows[at]["label"] = [None, "", "  "][at % 3]
    if defect == "list_label":
        rows[at]["label"] = [1, 2] if at % 2 else {"a": 1}
    if defect == "missing_label_column":
        for r in rows:
            r["lable"] = r.pop("label")
    dumped = [json.dumps(r, ensure_ascii=at % 2 == 0) for r in rows]  # raw non-ASCII (U+2028 too) or \u escapes
    if defect == "duplicate_key":
        dumped[at] = dumped[at][:-1] + ', "text": "again"}'
    if fmt == "jsonl":
        if defect == "not_json_line":
            dumped.insert(at, ["{'text': 'single quotes'}", "not json at all", '{"text": "cut off", "lab'][at % 3])
        if defect == "non_object_line":
            dumped.insert(at, ["[1, 2]", '"a string"', "null", "42"][at % 4])
        if defect == "blank_lines":
            dumped.insert(at, "   ")
        text = ("\r\n" if defect == "crlf" else "\n").join(dumped) + "\n"
    elif defect == "garbage":
        text = "[" + ", ".join(dumped)  # cut off
    else:
        text = "[" + ",\n".join(dumped) + "]"
        if defect == "json_wrapped":
            text = '{"version": 2, "data": ' + text + "}"
    return encode(text, defect)


def encode(text: str, defect: str) -> bytes:
    raw = text.encode("utf-8")
    if defect == "bom":
        return b"\xef\xbb\xbf" + raw
    if defect == "bad_encoding":  # a Latin-1 "é" (0xE9 then ASCII: never valid UTF-8) in the last line
        cut = raw.rstrip().rfind(b"\n") + 1
        return raw[:cut] + b"caf\xe9 " + raw[cut:]
    return raw


def parquet_bytes(defect: str, rows: list[dict], at: int) -> bytes:
    if defect == "garbage":
        return b"PAR1" + bytes(range(256)) * (at + 1)
    import pandas as pd

    frame = pd.DataFrame({"text": [str(r["text"]) for r in rows], "label": [label_to_string(r["label"]) for r in rows]})
    if "topic" in rows[0]:
        frame["topic"] = [csv_cell(r["topic"]) for r in rows]
    if defect == "nan_label":
        frame["label"] = frame["label"].astype(object)
        frame.loc[at, "label"] = "NaN"
    if defect == "empty_label":
        frame.loc[at, "label"] = None
    if defect == "missing_label_column":
        frame = frame.rename(columns={"label": "lable"})
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def expected_outcome(fmt: str, defect: str, rows: list[dict]):
    if defect in ERROR_DEFECTS:
        return None
    if fmt == "parquet":  # written from canonical strings
        return [str(r["text"]) for r in rows], [label_to_string(r["label"]) for r in rows]
    return expected_rows(fmt, rows)


def data_config(with_topic: bool):
    return OmegaConf.create(
        {
            "source": "local",
            "text_column": "text",
            "text_pair_column": None,
            "label_column": "label",
            "prompt_column": "prompt",
            "completion_column": "completion",
            "metadata_columns": ["topic"] if with_topic else [],
        }
    )


def check_case(fmt: str, defect: str, rows: list[dict], at: int, folder: Path) -> str:
    path = folder / f"data.{fmt}"
    path.write_bytes(serialize(fmt, defect, rows, at))
    expected = expected_outcome(fmt, defect, rows)
    try:
        frame = read_table(path)
        split = normalize_split(frame, data_config("topic" in rows[0]), "cls", f"{path} [train]")
    except UserError as exc:
        message = str(exc)
        assert expected is None, f"{defect} {fmt}: a well-formed file was refused: {message}"
        assert "\n" not in message and str(path) in message, f"not one line naming the file: {message!r}"
        return "error"
    assert expected is not None, f"{defect} {fmt}: a malformed file was accepted: {split.to_dict('list')}"
    assert split["text"].tolist() == expected[0]
    assert split["label"].tolist() == expected[1]
    if "topic" in rows[0]:
        import pyarrow as pa

        pa.Table.from_pandas(split)  # metadata of mixed types must still make an Arrow column (the cache)
    return "ok"


@pytest.fixture(scope="module", autouse=True)
def report_cases_tried():
    TRIED.clear()
    yield
    if TRIED:
        ok = sum(v for (_, _, outcome), v in TRIED.items() if outcome == "ok")
        print(
            f"\n{sum(TRIED.values())} generated files over {len({f for f, _, _ in TRIED})} formats and "
            f"{len({d for _, d, _ in TRIED})} kinds of defect: {ok} read correctly, "
            f"{sum(TRIED.values()) - ok} refused with one line"
        )


@pytest.mark.parametrize("defect", OK_DEFECTS + ERROR_DEFECTS)
def test_generated_files_give_the_right_rows_or_one_clear_line(defect):
    @settings(
        max_examples=EXAMPLES_PER_DEFECT,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(cases(defect))
    def every_case(case):
        fmt, defect_applied, rows, at = case
        with tempfile.TemporaryDirectory() as folder:
            outcome = check_case(fmt, defect_applied, rows, at, Path(folder))
        TRIED[(fmt, defect_applied, outcome)] += 1

    before = sum(TRIED.values())
    every_case()
    assert sum(TRIED.values()) - before >= EXAMPLES_PER_DEFECT // 2  # hypothesis ran the cases, not gave up on them


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("semicolons.csv", b"text;label\nnice;1\nbad;0\n", "wrong delimiter"),
        ("lines.jsonl", b'{"text": "nice", "label": 1}\n{"text": "bad", label: 0}\n', "line 2 is not valid JSON"),
        ("nan.json", b'[{"text": "nice", "label": 1}, {"text": "bad", "label": NaN}]', "row 2 has an empty label"),
    ],
)
def test_malformed_files_end_prepare_with_one_line(tmp_path, cache_dir, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError) as exc:
        run_command(
            "prepare",
            "model=tiny-bert",
            "data=local",
            f"data.path={path}",
            output_dir=tmp_path / "out",
            cache_dir=cache_dir,
        )
    message = str(exc.value)
    assert expected in message and str(path) in message
    assert "\n" not in message
