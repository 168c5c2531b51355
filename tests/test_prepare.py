"""`lmreason prepare` on real file formats and sources; cache reuse/invalidation; bad input."""

from __future__ import annotations

import json

import pytest

from conftest import SHARED_DATA, run_cli, write_sentiment_csv

TINY = ["model=tiny-bert"]


def prepare(tmp_path, cache_dir, *overrides, check=True):
    return run_cli("prepare", *TINY, f"hydra.run.dir={tmp_path / 'out'}", *overrides, cache_dir=cache_dir, cwd=tmp_path, check=check)


def test_csv_is_split_stratified_and_summarised(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 200)
    out = prepare(tmp_path, cache_dir, "data=local", f"data.path={data}", "data.metadata_columns=[topic]").stdout
    assert "built cache" in out
    for split, rows in (("train", "160"), ("validation", "20"), ("test", "20")):
        assert split in out and rows in out
    assert "0: 80, 1: 80" in out  # stratified: the label balance survives the split
    assert "tokens p50 / p95 / max" in out and "truncated" in out


def test_jsonl_with_text_pairs(tmp_path, cache_dir):
    rows = [{"premise": f"a man plays {i}", "hypothesis": f"someone plays {i % 3}", "gold": ["yes", "no"][i % 2]} for i in range(40)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = prepare(tmp_path, cache_dir, "data=local", f"data.path={data}", "data.text_column=premise",
                  "data.text_pair_column=hypothesis", "data.label_column=gold").stdout
    assert "no: 16, yes: 16" in out


def test_second_run_reuses_cache_and_changes_rebuild_it(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=5)
    args = ["data=local", f"data.path={data}"]
    assert "built cache" in prepare(tmp_path, cache_dir, *args).stdout
    assert "reused cache" in prepare(tmp_path, cache_dir, *args).stdout
    assert "built cache" in prepare(tmp_path, cache_dir, *args, "model.max_length=16").stdout  # setting
    assert "built cache" in prepare(tmp_path, cache_dir, *args, "data.seed=7").stdout         # data config
    data.write_text(data.read_text() + "the film was really great and long,1,a\n")
    assert "built cache" in prepare(tmp_path, cache_dir, *args).stdout                        # file content
    tokenizer = ["model.tokenizer=bert-base-uncased"]  # another tokenizer: unreachable offline, clear error
    proc = prepare(tmp_path, cache_dir, *args, *tokenizer, check=False)
    assert proc.returncode == 1 and "bert-base-uncased" in proc.stderr and "Traceback" not in proc.stderr


def test_directory_of_split_files_keeps_its_splits(tmp_path, cache_dir, split_dir):
    out = prepare(tmp_path, cache_dir, "data=local", f"data.path={split_dir}").stdout
    for split in ("train", "validation", "test", "ood"):
        assert split in out


def test_reasoning_source_keeps_difficulty_metadata(tmp_path, cache_dir):
    out = prepare(tmp_path, cache_dir, "data=reasoning", "data.sizes={train: 120, validation: 30, test: 30, ood: 30}").stdout
    assert "reasoning-gym:syllogism" in out and "ood" in out
    assert "metadata kept for per-slice metrics" in out and "meta_type" in out and "distribution" in out


@pytest.mark.skipif(not (SHARED_DATA / "bigbench").is_dir(), reason="needs ../shared/data")
def test_bigbench_task_json_as_classification(tmp_path, cache_dir):
    task = SHARED_DATA / "bigbench" / "strategyqa" / "task.json"
    out = prepare(tmp_path, cache_dir, "data=bigbench", f"data.path={task}").stdout
    assert "No:" in out and "Yes:" in out


def test_real_bert_tokenizer_loads_offline(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 40)
    proc = run_cli("prepare", "model=bert", "data=local", f"data.path={data}", f"hydra.run.dir={tmp_path / 'o'}",
                   cache_dir=cache_dir, cwd=tmp_path)
    assert "max_length 128" in proc.stdout


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
def test_bad_input_is_one_clear_line(tmp_path, cache_dir, case):
    content, extra, expected = BAD_INPUTS[case]
    path = tmp_path / "data.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    if extra:
        (tmp_path / "data.xlsx").write_text("x")
    overrides = [e.format(dir=tmp_path) for e in extra] or [f"data.path={path}"]
    proc = prepare(tmp_path, cache_dir, "data=local", *overrides, check=False)
    assert proc.returncode == 1
    assert expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_evaluation_label_outside_training_set(tmp_path, cache_dir):
    root = tmp_path / "d"
    root.mkdir()
    (root / "train.csv").write_text("text,label\na,x\nb,y\nc,x\nd,y\n")
    (root / "validation.csv").write_text("text,label\ne,x\nf,z\n")
    proc = prepare(tmp_path, cache_dir, "data=local", f"data.path={root}", check=False)
    assert proc.returncode == 1 and "split 'validation' row 2 has label 'z'" in proc.stderr


def test_empty_split_is_refused(tmp_path, cache_dir):
    root = tmp_path / "d"
    root.mkdir()
    (root / "train.csv").write_text("text,label\na,x\nb,y\n")
    (root / "test.csv").write_text("text,label\n")
    proc = prepare(tmp_path, cache_dir, "data=local", f"data.path={root}", check=False)
    assert proc.returncode == 1 and "empty" in proc.stderr


def test_missing_path_is_refused(tmp_path, cache_dir):
    proc = prepare(tmp_path, cache_dir, "data=local", f"data.path={tmp_path / 'nope.csv'}", check=False)
    assert proc.returncode == 1 and "no such file or directory" in proc.stderr
