"""`lmreason evaluate` and `lmreason infer` on a finished tiny run: reports, slices, the OOD gap, bad input."""

from __future__ import annotations

import json

from conftest import read_json, run_cli


def test_evaluate_writes_metrics_slices_plots_and_the_ood_gap(tmp_path, cache_dir, finished_run):
    out = run_cli("evaluate", f"run={finished_run}", "device=cpu", cache_dir=cache_dir, cwd=tmp_path).stdout
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
    rows = [json.loads(line) for line in (finished_run / "eval" / "test" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 48 and {"text", "label", "predicted", "confidence", "topic"} <= set(rows[0])
    assert "OOD" in out and "gap" in out


def test_evaluate_any_split_by_name_and_unknown_split(tmp_path, cache_dir, finished_run):
    run_cli("evaluate", f"run={finished_run}", "split=validation", "compare_ood=false", cache_dir=cache_dir, cwd=tmp_path)
    assert read_json(finished_run / "eval" / "validation" / "metrics.json")["n"] == 48
    proc = run_cli("evaluate", f"run={finished_run}", "split=dev2", cache_dir=cache_dir, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "split=dev2 does not exist" in proc.stderr and "train, validation, test, ood" in proc.stderr


def test_evaluate_and_infer_refuse_a_dir_without_checkpoint(tmp_path, cache_dir):
    (tmp_path / "empty_run").mkdir()
    for command, extra in (("evaluate", []), ("infer", ["text=hello"])):
        proc = run_cli(command, f"run={tmp_path / 'empty_run'}", *extra, cache_dir=cache_dir, cwd=tmp_path, check=False)
        assert proc.returncode == 1 and "no checkpoint" in proc.stderr and "Traceback" not in proc.stderr


def test_infer_texts_and_files_in_input_order(tmp_path, cache_dir, finished_run):
    out = run_cli("infer", f"run={finished_run}", "text=[the film was really great and long,the film was really dull]",
                  cache_dir=cache_dir, cwd=tmp_path).stdout
    assert "2 prediction(s)" in out
    source = tmp_path / "inputs.jsonl"
    texts = ["the film was really awful and short", "the film was really superb and long, with a long long tail of words"]
    source.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    output = tmp_path / "predictions.jsonl"
    run_cli("infer", f"checkpoint={finished_run / 'checkpoints' / 'best'}", f"input={source}", f"output={output}",
            "batch_size=1", cache_dir=cache_dir, cwd=tmp_path)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert abs(sum(rows[0]["probs"].values()) - 1) < 1e-4
    # the same texts given the other way round, batched together: each row keeps its own prediction
    reversed_output = tmp_path / "reversed.jsonl"
    run_cli("infer", f"run={finished_run}", f"text=[{texts[1].replace(',', '')},{texts[0]}]", f"output={reversed_output}",
            cache_dir=cache_dir, cwd=tmp_path)
    reversed_rows = [json.loads(line) for line in reversed_output.read_text().splitlines()]
    assert reversed_rows[1]["text"] == texts[0] and reversed_rows[1]["label"] == rows[0]["label"]
    assert abs(reversed_rows[1]["probs"]["1"] - rows[0]["probs"]["1"]) < 1e-5
    txt = tmp_path / "inputs.txt"
    txt.write_text("\n".join(texts) + "\n")
    run_cli("infer", f"run={finished_run}", f"input={txt}", f"output={output}", cache_dir=cache_dir, cwd=tmp_path)
    assert len(output.read_text().splitlines()) == 2


def test_infer_input_without_text_column(tmp_path, cache_dir, finished_run):
    source = tmp_path / "inputs.csv"
    source.write_text("sentence\nhello\n")
    proc = run_cli("infer", f"run={finished_run}", f"input={source}", cache_dir=cache_dir, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "no column 'text'" in proc.stderr and "sentence" in proc.stderr
