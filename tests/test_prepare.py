"""`lmreason prepare` on real file formats and sources; cache reuse/invalidation; bad input.

In-process (`run_command`, the printed summary read with capsys); one subprocess checks the CLI's
exit status / one-line error for prepare."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED_DATA, assert_one_line_error, run_cli, run_command, write_sentiment_csv

from lmreason.errors import UserError

TINY = ["model=tiny-bert"]


@pytest.fixture
def prepare(tmp_path, cache_dir, capsys):
    """`lmreason prepare model=tiny-bert <overrides>` in-process; returns what it printed."""

    def run(*overrides: str) -> str:
        capsys.readouterr()
        run_command("prepare", *TINY, *overrides, output_dir=tmp_path / "out", cache_dir=cache_dir)
        return capsys.readouterr().out

    return run


def refused(prepare, *overrides: str) -> str:
    """The one-line UserError message `prepare` raises for `overrides`."""
    with pytest.raises(UserError) as exc:
        prepare(*overrides)
    assert "\n" not in str(exc.value), str(exc.value)
    return str(exc.value)


def test_csv_is_split_stratified_and_summarised(tmp_path, prepare):
    data = write_sentiment_csv(tmp_path / "data.csv", 200)
    out = prepare("data=local", f"data.path={data}", "data.metadata_columns=[topic]")
    assert "built cache" in out
    for split, rows in (("train", "160"), ("validation", "20"), ("test", "20")):
        assert split in out and rows in out
    assert "0: 80, 1: 80" in out  # stratified: the label balance survives the split
    assert "tokens p50 / p95 / max" in out and "truncated" in out


def test_jsonl_with_text_pairs(tmp_path, prepare):
    rows = [
        {"premise": f"a man plays {i}", "hypothesis": f"someone plays {i % 3}", "gold": ["yes", "no"][i % 2]}
        for i in range(40)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = prepare(
        "data=local",
        f"data.path={data}",
        "data.text_column=premise",
        "data.text_pair_column=hypothesis",
        "data.label_column=gold",
    )
    assert "no: 16, yes: 16" in out


def test_second_run_reuses_cache_and_changes_rebuild_it(tmp_path, prepare):
    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=5)
    args = ["data=local", f"data.path={data}"]
    assert "built cache" in prepare(*args)
    assert "reused cache" in prepare(*args)
    assert "built cache" in prepare(*args, "model.max_length=16")  # setting
    assert "built cache" in prepare(*args, "data.seed=7")  # data config
    data.write_text(data.read_text() + "the film was really great and long,1,a\n")
    assert "built cache" in prepare(*args)  # file content
    tokenizer = ["model.tokenizer=bert-base-uncased"]  # another tokenizer: unreachable offline, clear error
    assert "bert-base-uncased" in refused(prepare, *args, *tokenizer)


def test_directory_of_split_files_keeps_its_splits(tmp_path, prepare, split_dir):
    out = prepare("data=local", f"data.path={split_dir}")
    for split in ("train", "validation", "test", "ood"):
        assert split in out


def test_reasoning_source_keeps_difficulty_metadata(tmp_path, prepare):
    out = prepare("data=reasoning", "data.sizes={train: 120, validation: 30, test: 30, ood: 30}")
    assert "reasoning-gym:syllogism" in out and "ood" in out
    assert "metadata kept for per-slice metrics" in out and "meta_type" in out and "distribution" in out


@pytest.mark.skipif(not (SHARED_DATA / "bigbench").is_dir(), reason="needs ../shared/data")
def test_bigbench_task_json_as_classification(tmp_path, prepare):
    task = SHARED_DATA / "bigbench" / "strategyqa" / "task.json"
    out = prepare("data=bigbench", f"data.path={task}")
    assert "No:" in out and "Yes:" in out


def test_real_bert_tokenizer_loads_offline(tmp_path, prepare):
    data = write_sentiment_csv(tmp_path / "data.csv", 40)
    assert "max_length 128" in prepare("model=bert", "data=local", f"data.path={data}")


BAD_INPUTS = {
    "missing column": ("text,lab\nhello,1\nbye,0\n", [], "no column 'label' (data.label_column)"),
    "empty text": ("text,label\nhello,1\n,0\nbye,0\nhi,1\n", [], "row 2 has an empty text"),
    "missing label": ("text,label\nhello,1\nbye,\nhi,0\n", [], "row 2 has an empty label"),
    "empty file": ("", [], "the file is empty"),
    "ragged rows": ("text,label\nhello,1\nbye,0,extra,more\n", [], "malformed CSV"),
    "duplicate header": ("text,text,label\na,b,1\n", [], "repeats column 'text'"),
    "bad utf8": (b"text,label\nhello,1\nbad \xff\xfe,0\n", [], "line 3 is not valid UTF-8"),
    "wrong extension": ("x", ["data.path={dir}/data.xlsx"], "cannot tell the file format"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_clear_line(tmp_path, prepare, case):
    content, extra, expected = BAD_INPUTS[case]
    path = tmp_path / "data.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if extra:
        (tmp_path / "data.xlsx").write_text("x")
    overrides = [e.format(dir=tmp_path) for e in extra] or [f"data.path={path}"]
    message = refused(prepare, "data=local", *overrides)
    assert expected in message, message


def test_evaluation_label_outside_training_set(tmp_path, prepare):
    root = tmp_path / "d"
    root.mkdir()
    (root / "train.csv").write_text("text,label\na,x\nb,y\nc,x\nd,y\n")
    (root / "validation.csv").write_text("text,label\ne,x\nf,z\n")
    assert "split 'validation' row 2 has label 'z'" in refused(prepare, "data=local", f"data.path={root}")


def test_empty_split_is_refused(tmp_path, prepare):
    root = tmp_path / "d"
    root.mkdir()
    (root / "train.csv").write_text("text,label\na,x\nb,y\n")
    (root / "test.csv").write_text("text,label\n")
    assert "empty" in refused(prepare, "data=local", f"data.path={root}")


def test_missing_path_is_refused(tmp_path, prepare):
    assert "no such file or directory" in refused(prepare, "data=local", f"data.path={tmp_path / 'nope.csv'}")


def test_bad_input_on_the_command_line_is_one_line(tmp_path, cache_dir):
    """The CLI contract for prepare: a UserError ends the process with status 1 and one line, no traceback."""
    (tmp_path / "data.csv").write_text("text,lab\nhello,1\nbye,0\n")
    proc = run_cli(
        "prepare",
        *TINY,
        "data=local",
        f"data.path={tmp_path / 'data.csv'}",
        f"hydra.run.dir={tmp_path / 'out'}",
        cache_dir=cache_dir,
        cwd=tmp_path,
        check=False,
    )
    assert_one_line_error(proc, "no column 'label' (data.label_column)")
