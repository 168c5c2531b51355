"""`lmreason evaluate` and `lmreason infer` on a finished tiny run: reports, slices, the OOD gap, bad input.

In-process (`run_command`); one subprocess per command checks the CLI's exit status / one-line error."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, read_json, run_cli, run_command

from lmreason.errors import UserError


def evaluate(tmp_path, cache_dir, *overrides):
    return run_command("evaluate", *overrides, output_dir=tmp_path / "out", cache_dir=cache_dir)


def infer(tmp_path, cache_dir, *overrides):
    return run_command("infer", *overrides, output_dir=tmp_path / "out", cache_dir=cache_dir)


def test_evaluate_writes_metrics_slices_plots_and_the_ood_gap(tmp_path, cache_dir, finished_run, capsys):
    evaluate(tmp_path, cache_dir, f"run={finished_run}", "device=cpu")
    out = capsys.readouterr().out
    test = read_json(finished_run / "eval" / "test" / "metrics.json")
    for key in ("acc", "f1_macro", "ece", "loss", "per_class", "confusion", "majority_baseline"):
        assert key in test
    assert sum(map(sum, test["confusion"])) == test["n"] == 48
    assert set(test["slices"]["topic"]) == {"a", "b", "c"}
    assert sum(s["n"] for s in test["slices"]["topic"].values()) == 48
    assert (finished_run / "eval" / "ood" / "metrics.json").is_file()
    gap = read_json(finished_run / "eval" / "gap.json")["gap"]
    assert gap["acc"]["gap"] == gap["acc"]["in_distribution"] - gap["acc"]["ood"]
    for png in ("confusion_matrix.png", "reliability.png"):
        assert (finished_run / "eval" / "test" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [
        json.loads(line) for line in (finished_run / "eval" / "test" / "predictions.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 48 and {"text", "label", "predicted", "confidence", "topic"} <= set(rows[0])
    assert "in-distribution vs OOD" in out and "OOD worse by" in out


def test_evaluate_any_split_by_name_and_unknown_split(tmp_path, cache_dir, finished_run):
    evaluate(tmp_path, cache_dir, f"run={finished_run}", "split=validation", "compare_ood=false")
    assert read_json(finished_run / "eval" / "validation" / "metrics.json")["n"] == 48
    with pytest.raises(UserError, match="split=dev2 does not exist") as exc:
        evaluate(tmp_path, cache_dir, f"run={finished_run}", "split=dev2")
    assert "train, validation, test, ood" in str(exc.value) and "\n" not in str(exc.value)


def test_evaluate_and_infer_refuse_a_dir_without_checkpoint(tmp_path, cache_dir):
    """The CLI contract, once per command: a UserError ends the process with status 1 and one line, no traceback."""
    (tmp_path / "empty_run").mkdir()
    for command, extra in (("evaluate", []), ("infer", ["text=hello"])):
        proc = run_cli(command, f"run={tmp_path / 'empty_run'}", *extra, cache_dir=cache_dir, cwd=tmp_path, check=False)
        assert_one_line_error(proc, "no checkpoint")


def test_infer_texts_and_files_in_input_order(tmp_path, cache_dir, finished_run, capsys):
    infer(
        tmp_path, cache_dir, f"run={finished_run}", "text=[the film was really great and long,the film was really dull]"
    )
    assert "2 prediction(s)" in capsys.readouterr().out
    source = tmp_path / "inputs.jsonl"
    texts = [
        "the film was really awful and short",
        "the film was really superb and long, with a long long tail of words",
    ]
    source.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    output = tmp_path / "predictions.jsonl"
    infer(
        tmp_path,
        cache_dir,
        f"checkpoint={finished_run / 'checkpoints' / 'best'}",
        f"input={source}",
        f"output={output}",
        "batch_size=1",
    )
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert abs(sum(rows[0]["probs"].values()) - 1) < 1e-4
    # the same texts given the other way round, batched together: each row keeps its own prediction
    reversed_output = tmp_path / "reversed.jsonl"
    infer(
        tmp_path,
        cache_dir,
        f"run={finished_run}",
        f"text=[{texts[1].replace(',', '')},{texts[0]}]",
        f"output={reversed_output}",
    )
    reversed_rows = [json.loads(line) for line in reversed_output.read_text().splitlines()]
    assert reversed_rows[1]["text"] == texts[0] and reversed_rows[1]["label"] == rows[0]["label"]
    assert abs(reversed_rows[1]["probs"]["1"] - rows[0]["probs"]["1"]) < 1e-5
    txt = tmp_path / "inputs.txt"
    txt.write_text("\n".join(texts) + "\n")
    infer(tmp_path, cache_dir, f"run={finished_run}", f"input={txt}", f"output={output}")
    assert len(output.read_text().splitlines()) == 2


def test_infer_input_without_text_column(tmp_path, cache_dir, finished_run):
    source = tmp_path / "inputs.csv"
    source.write_text("sentence\nhello\n")
    with pytest.raises(UserError, match="no column 'text'") as exc:
        infer(tmp_path, cache_dir, f"run={finished_run}", f"input={source}")
    assert "sentence" in str(exc.value) and "\n" not in str(exc.value)
