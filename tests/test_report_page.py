"""eval/report.html and compare.html: every section, figures embedded, nothing fetched, intervals in the JSON,
and `compare=` refusing runs that do not share examples."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import read_json, run_command

from lmreason.errors import UserError
from lmreason.evaluation.metrics import reliability_bins

SECTIONS = ("summary", "slices", "calibration", "robustness", "attribution", "classes", "curves")


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, finished_run, cache_dir) -> Path:
    """A copy of the tiny finished run, evaluated (test + ood) with no diagnostics."""
    run_dir = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(finished_run, run_dir, ignore=shutil.ignore_patterns("eval"))
    run_command("evaluate", f"run={run_dir}", "device=cpu", output_dir=run_dir.parent / "ev", cache_dir=cache_dir)
    return run_dir


def _page(run_dir: Path) -> str:
    return (run_dir / "eval" / "report.html").read_text()


def test_metrics_and_gap_carry_bootstrap_intervals(evaluated_run):
    test = read_json(evaluated_run / "eval" / "test" / "metrics.json")
    lo, hi = test["acc_ci"]
    assert lo <= test["acc"] <= hi and 0.0 <= lo and hi <= 1.0
    assert test["ece_ci"][0] <= test["ece"] <= test["ece_ci"][1]
    for row in test["slices"]["topic"].values():  # each slice's own interval, over its examples
        assert row["acc_ci"][0] <= row["acc"] <= row["acc_ci"][1]
    acc = read_json(evaluated_run / "eval" / "gap.json")["gap"]["acc"]
    assert acc["gap_ci"][0] <= acc["gap"] <= acc["gap_ci"][1]
    assert acc["ood_worse_by_ci"] == acc["gap_ci"]  # higher is better: the same sign
    ece = read_json(evaluated_run / "eval" / "gap.json")["gap"]["ece"]
    assert ece["ood_worse_by_ci"] == [-ece["gap_ci"][1], -ece["gap_ci"][0]]


def test_page_has_every_section_embeds_its_figures_and_fetches_nothing(evaluated_run):
    html = _page(evaluated_run)
    for section in SECTIONS:
        assert f'<section id="{section}"' in html, section
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/svg+xml;base64,") for s in sources), sources[:3]
    # slices plot, two reliability diagrams, two confusion matrices, training curves
    assert len(sources) >= 6
    assert not re.search(r"<(script|link|iframe)\b", html) and "@import" not in html and "url(" not in html
    # the summary sentence and the settings come from the run
    assert "points" in html and "from test to the OOD split" in html
    assert "adamw" in html and "tiny" not in html.split("<body>")[0]


def test_sections_of_diagnostics_not_run_say_how_to_run_them(evaluated_run):
    html = _page(evaluated_run)
    assert f"lmreason evaluate run={evaluated_run} &#39;diagnostics=[robustness]&#39;" in html
    assert "diagnostics=[attribution]" in html and "diagnostics=[calibration]" in html


def test_calibration_file_renders_before_and_after_temperature_scaling(evaluated_run, tmp_path):
    from lmreason.evaluation.report_page import write_run_report

    eval_dir = tmp_path / "eval"
    shutil.copytree(evaluated_run / "eval", eval_dir)
    bins = reliability_bins([0.9, 0.8, 0.7, 0.95], [1, 0, 1, 1])
    (eval_dir / "calibration.json").write_text(
        json.dumps(
            {
                "temperature": 1.7,
                "fitted_on": "validation",
                "splits": {
                    s: {
                        "ece_before": 0.21,
                        "ece_after": 0.04,
                        "nll_before": 0.9,
                        "nll_after": 0.6,
                        "reliability_before": bins,
                        "reliability_after": bins,
                    }
                    for s in ("test", "ood")
                },
            }
        )
    )
    html = write_run_report(eval_dir, evaluated_run, ["test", "ood"], None, "cls").read_text()
    assert "T = 1.700, fitted on validation" in html
    assert "0.2100</td><td>0.0400" in html
    assert "Temperature scaling was not run" not in html
    assert html.count("reliability before/after scaling") == 4  # before and after, per split


def test_robustness_and_attribution_files_render_with_changed_words_marked(evaluated_run, tmp_path):
    from lmreason.evaluation.report_page import write_run_report

    eval_dir = tmp_path / "eval"
    shutil.copytree(evaluated_run / "eval", eval_dir)
    test = eval_dir / "test"
    row = {"suite": "character", "test": "typos", "expectation": "INV", "applicable": 10, "tried": 10}
    (test / "robustness.json").write_text(
        json.dumps(
            {
                "clean_acc": 1.0,
                "tests": {
                    "character/typos": {
                        **row,
                        "acc_before": 1.0,
                        "acc_after": 0.7,
                        "flip_rate": 0.3,
                        "failure_rate": 0.3,
                    },
                    "word/synonyms": {
                        **row,
                        "acc_before": 1.0,
                        "acc_after": 0.9,
                        "flip_rate": 0.1,
                        "failure_rate": 0.1,
                    },
                },
                "skipped": ["reasoning/rename"],
            }
        )
    )
    flip = {"suite": "character/typos", "original": "a great film", "perturbed": "a graet film"}
    (test / "robustness.jsonl").write_text(json.dumps({**flip, "predicted_before": "1", "predicted_after": "0"}) + "\n")
    (test / "attribution.json").write_text(json.dumps({"method": "occlusion", "leaned_on": {"1": [_word("great")]}}))
    attributed = {"group": "error", "words": ["a", "great"], "scores": [0.1, -0.5], "gold": "1", "label": "0"}
    (test / "attributions.jsonl").write_text(json.dumps({**attributed, "confidence": 0.6}) + "\n")
    html = write_run_report(eval_dir, evaluated_run, ["test", "ood"], None, "cls").read_text()
    section = html.split('<section id="robustness">')[1].split("</section>")[0]
    assert section.index("character/typos") < section.index("word/synonyms")  # worst first
    assert "<del>great</del>" in section and "<ins>graet</ins>" in section
    attribution = html.split('<section id="attribution">')[1].split("</section>")[0]
    assert "rgba(180,35,24,1.0)" in attribution  # the strongest word, against the label
    assert "rgba(26,127,55,0.2)" in attribution and "<td>great</td>" in attribution


def _word(word: str) -> dict:
    return {"word": word, "mean_score": 0.05, "examples": 4, "flag": None, "train_count": 9, "train_pmi": 0.6}


def test_summary_is_a_markdown_text_entry_in_tensorboard(evaluated_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(evaluated_run / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    assert "report/summary/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("report/summary/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| metric | test | ood | OOD worse by (95% CI) |" in text and "| acc |" in text


# --------------------------------------------------------------------------- compare
def _fake_run(root: Path, correct: list[bool], texts: list[str] | None = None, labels=("0", "1"), lr=1e-3) -> Path:
    """A run dir with what compare reads: its config and eval/test records (text "... <k>" has label k % 2)."""
    texts = texts or [f"example {i}" for i in range(len(correct))]
    (root / ".hydra").mkdir(parents=True)
    (root / ".hydra" / "config.yaml").write_text(f"optimizer:\n  lr: {lr}\noutput_dir: {root}\n")
    split = root / "eval" / "test"
    split.mkdir(parents=True)
    rows = []
    for text, ok in zip(texts, correct):
        k = int(text.rsplit(" ", 1)[1]) % 2
        rows.append({"text": text, "label": labels[k], "predicted": labels[k if ok else 1 - k], "confidence": 0.8})
    (split / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (split / "metrics.json").write_text(json.dumps({"label_names": list(labels)}))
    return root


def test_compare_marks_a_real_paired_gain_and_writes_the_page(tmp_path, cache_dir):
    base = [i % 4 != 0 for i in range(400)]  # 75% correct
    better = [ok or i % 8 == 0 for i, ok in enumerate(base)]  # fixes half the errors: 87.5%
    a, b = _fake_run(tmp_path / "a", base), _fake_run(tmp_path / "b", better, lr=3e-3)
    # the same examples in another order still pair up (matched by text)
    same = _fake_run(tmp_path / "c", base[::-1], texts=[f"example {i}" for i in range(400)][::-1])
    out = tmp_path / "out"
    result = run_command("evaluate", f"compare=[{a},{b},{same}]", output_dir=out, cache_dir=cache_dir)
    acc = next(r for r in result["rows"] if r["metric"] == "test/acc")
    gain, itself = acc["cells"][1], acc["cells"][2]
    assert gain["diff"] == pytest.approx(0.125) and gain["significant"] and gain["reading"] == "better"
    assert itself["diff_ci"] == [0.0, 0.0] and not itself["significant"]
    assert result["settings"] == {"optimizer.lr": ["0.001", "0.003", "0.001"]}  # output_dir differs, ignored
    html = (out / "compare.html").read_text()
    assert "optimizer.lr" in html and "better (significant)" in html and "within noise" in html
    assert not re.search(r'\b(?:src|href)="https?:', html)
    assert read_json(out / "compare.json")["baseline"] == str(a)


def test_compare_refuses_runs_on_other_examples_or_labels_and_unevaluated_runs(tmp_path, cache_dir):
    a = _fake_run(tmp_path / "a", [True] * 20)
    other = _fake_run(tmp_path / "b", [True] * 20, texts=[f"another {i}" for i in range(20)])
    relabelled = _fake_run(tmp_path / "c", [True] * 20, labels=("neg", "pos"))
    bare = tmp_path / "bare"
    bare.mkdir()
    out = tmp_path / "out"
    with pytest.raises(UserError, match=r"different test examples \(20 vs 20, 0 texts in common\)"):
        run_command("evaluate", f"compare=[{a},{other}]", output_dir=out, cache_dir=cache_dir)
    with pytest.raises(UserError, match="different label sets"):
        run_command("evaluate", f"compare=[{a},{relabelled}]", output_dir=out, cache_dir=cache_dir)
    with pytest.raises(UserError, match=f"evaluate it first: lmreason evaluate run={bare}"):
        run_command("evaluate", f"compare=[{a},{bare}]", output_dir=out, cache_dir=cache_dir)
    with pytest.raises(UserError, match="two or more"):
        run_command("evaluate", f"compare=[{a}]", output_dir=out, cache_dir=cache_dir)
    assert not (out / "compare.html").exists()


def test_sweep_report_writes_the_comparison_page_over_its_evaluated_jobs(tmp_path, cache_dir):
    from lmreason.evaluation.sweep import sweep_report

    sweep = tmp_path / "multirun"
    _fake_run(sweep / "0", [i % 3 != 0 for i in range(60)])
    _fake_run(sweep / "1", [True] * 60, lr=3e-3)
    (sweep / "2" / ".hydra").mkdir(parents=True)  # a job that never got evaluated: left out of the page
    report = sweep_report(sweep)
    assert report["comparison_page"] == str(sweep / "compare.html")
    comparison = read_json(sweep / "compare.json")
    assert comparison["runs"] == [str(sweep / "0"), str(sweep / "1")]


def test_compare_goes_alone(tmp_path, cache_dir):
    with pytest.raises(UserError, match="compare=.* alone, without run="):
        run_command("evaluate", "compare=[a,b]", "run=c", output_dir=tmp_path, cache_dir=cache_dir)


def test_headline_sentence_says_a_fall_only_when_its_interval_excludes_zero():
    from lmreason.evaluation.report_context import headline_sentence

    real = {"acc": {"gap": 0.294, "gap_ci": [0.238, 0.344]}}
    text = headline_sentence("cls", real, "test", "inverted syllogisms")
    assert text == "Accuracy falls 29.4 points (95% CI 23.8 to 34.4) from test to the OOD split: inverted syllogisms."
    noise = {"acc": {"gap": 0.02, "gap_ci": [-0.01, 0.05]}}
    assert "within the noise" in headline_sentence("cls", noise, "test")
    assert "No OOD split" in headline_sentence("cls", None, "test")
