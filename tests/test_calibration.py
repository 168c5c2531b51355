"""diagnostics=calibration and infer's temperature: the fit recovers a known miscalibration, accuracy never moves,
evaluate writes the documented files, infer applies T (or not), bad input is one line."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from conftest import assert_one_line_error, read_json, run_cli, run_command, tensorboard_scalar_tags

from lmreason.errors import UserError
from lmreason.evaluation.calibration import (
    T_MIN,
    check_config,
    fit_temperature,
    nll,
    scaled_probs,
    split_calibration,
)
from lmreason.evaluation.metrics import expected_calibration_error


def calibrated_set(n: int = 4000, classes: int = 3, seed: int = 0):
    """Logits (N, C) and labels drawn from softmax(logits): calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes)) * 2.0
    probs = scaled_probs(logits, 1.0)
    labels = (rng.random(n)[:, None] > probs.cumsum(axis=1)).sum(axis=1)  # inverse-CDF draw per row
    return logits, labels


# ------------------------------------------------------------------ the fit
@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_fitted_temperature_recovers_a_known_over_or_underconfidence(factor):
    """Logits multiplied by k are over- (k > 1) or under-confident (k < 1); T = k undoes it."""
    logits, labels = calibrated_set()
    fit = fit_temperature(logits * factor, labels)
    assert fit.temperature == pytest.approx(factor, rel=0.05)
    assert fit.note is None and fit.n == len(labels)
    assert fit.nll_after < fit.nll_before - 0.05
    figures = split_calibration(logits * factor, labels, fit.temperature)
    assert figures["ece_after"] < figures["ece_before"] / 4
    assert figures["nll_after"] < figures["nll_before"]
    if factor > 1:  # overconfident: T lowers the mean confidence
        assert figures["confidence_after"] < figures["confidence_before"]


def test_a_calibrated_set_keeps_t_near_one():
    logits, labels = calibrated_set(seed=1)
    fit = fit_temperature(logits, labels)
    assert fit.temperature == pytest.approx(1.0, abs=0.05)
    assert fit.nll_after <= fit.nll_before + 1e-12


def test_the_fit_is_the_nll_minimum_on_a_grid():
    """LBFGS lands where a fine grid search (what Desai & Durrett's calibrate.py does) finds the lowest NLL."""
    logits, labels = calibrated_set(n=500, seed=2)
    logits = logits * 1.7
    fit = fit_temperature(logits, labels)
    grid = np.arange(0.5, 4.0, 0.001)
    best = grid[np.argmin([nll(logits, labels, t) for t in grid])]
    assert fit.temperature == pytest.approx(best, abs=0.002)
    assert fit.nll_after <= min(nll(logits, labels, t) for t in grid) + 1e-9


def test_temperature_never_changes_a_prediction_or_the_accuracy():
    logits, labels = calibrated_set(n=1000, seed=3)
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    for t in (0.07, 0.5, 1.0, 2.3, 15.0):
        assert (scaled_probs(logits, t).argmax(axis=1) == logits.argmax(axis=1)).all()
        assert split_calibration(logits, labels, t)["acc"] == accuracy


def test_fit_data_without_errors_or_a_minimum_beyond_a_bound_gives_the_bound():
    """No errors: the NLL falls for ever as T -> 0, so its minimum on [T_MIN, T_MAX] is T_MIN, and the note says
    so. One error far below the rest's margins puts the minimum under T_MIN: T stops there and says so."""
    logits = np.array([[4.0, 0.0], [0.0, 3.0], [5.0, 1.0], [1.0, 6.0]])
    fit = fit_temperature(logits, np.array([0, 1, 0, 1]))
    assert fit.temperature == T_MIN and fit.nll_after < fit.nll_before and "every fit example" in fit.note
    margins = np.array([[0.5, 0.0]] * 1000 + [[0.0, 1e-6]])  # the NLL's minimum: T ~ 0.024 (a grid says)
    fit = fit_temperature(margins, np.array([0] * 1001))
    assert fit.temperature == T_MIN and "bound" in fit.note
    assert fit.nll_after < fit.nll_before


def test_ece_is_desai_and_durretts_definition():
    """Their calibrate.py: equal-width buckets of the max probability (left-closed), sum of count/N * |acc - conf|.
    Away from bucket edges ours gives the same number for the same bucket count."""
    rng = np.random.default_rng(4)
    confidence = rng.uniform(0.5, 1.0, size=3000)
    correct = rng.random(3000) < confidence**2  # overconfident
    for buckets in (10, 15):
        total = 0.0
        for k in range(buckets):
            rows = (confidence >= k / buckets) & (confidence < (k + 1) / buckets)
            if rows.any():
                total += rows.sum() / len(confidence) * abs(correct[rows].mean() - confidence[rows].mean())
        assert expected_calibration_error(confidence, correct, buckets) == pytest.approx(total, abs=1e-12)


# ------------------------------------------------------------------ evaluate / infer on a tiny run
@pytest.fixture
def own_run(tmp_path, finished_run):
    """A copy of the shared run: fitting writes into its checkpoint, which other tests' infer runs must not see."""
    return shutil.copytree(finished_run, tmp_path / "run", copy_function=shutil.copy2)


def _evaluate(tmp_path, cache_dir, *overrides):
    return run_command("evaluate", "device=cpu", *overrides, output_dir=tmp_path / "out", cache_dir=cache_dir)


def _infer(tmp_path, cache_dir, *overrides):
    return run_command("infer", "device=cpu", *overrides, output_dir=tmp_path / "out", cache_dir=cache_dir)


def _raw_logits(checkpoint, texts):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    with torch.inference_mode():
        return np.stack([model(**tokenizer(t, return_tensors="pt")).logits[0].float().numpy() for t in texts])


def test_evaluate_fits_saves_and_reports_the_temperature(tmp_path, cache_dir, own_run, capsys):
    results = _evaluate(tmp_path, cache_dir, f"run={own_run}", "diagnostics=calibration")
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines (a long tmp path)
    report = read_json(own_run / "eval" / "calibration.json")
    assert results["calibration"]["temperature"] == report["temperature"] > 0
    assert report["fitted_on"] == "validation" and report["n_fit"] == 48
    assert set(report["splits"]) == {"test", "ood"}
    for split, figures in report["splits"].items():
        assert {"ece_before", "ece_after", "nll_before", "nll_after", "reliability_before", "reliability_after"} <= set(
            figures
        )
        metrics = read_json(own_run / "eval" / split / "metrics.json")
        # "before" is the evaluation's own calibration: the same ECE, loss and reliability bins as metrics.json
        assert figures["ece_before"] == pytest.approx(metrics["ece"], abs=1e-6)
        assert figures["nll_before"] == pytest.approx(metrics["loss"], abs=1e-5)
        assert [b["count"] for b in figures["reliability_before"]] == [b["count"] for b in metrics["reliability"]]
        assert figures["acc"] == metrics["acc"]  # T changes no prediction
        assert sum(b["count"] for b in figures["reliability_after"]) == metrics["n"] == 48
        png = own_run / "eval" / split / "reliability_calibrated.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = read_json(own_run / "checkpoints" / "best" / "calibration.json")
    assert saved["temperature"] == report["temperature"] and saved["fitted_on"] == "validation"
    assert saved["n"] == 48 and saved["nll_after"] <= saved["nll_before"] + 1e-12
    assert "calibration: T =" in out and "ECE before -> after" in out and "infer applies it" in out
    tags = tensorboard_scalar_tags(own_run)
    assert {"calibration/temperature", "calibration/test/ece_after", "calibration/ood/nll_before"} <= tags

    # infer: softmax(logits / T) by default, the raw softmax with calibrated=false
    texts = ["the film was really great and long", "the film was really dull"]
    t = saved["temperature"]
    logits = _raw_logits(own_run / "checkpoints" / "best", texts)
    calibrated = _infer(tmp_path, cache_dir, f"run={own_run}", f"text=[{','.join(texts)}]")
    assert f"temperature {t:.4g}" in " ".join(capsys.readouterr().out.split())
    raw = _infer(tmp_path, cache_dir, f"run={own_run}", f"text=[{','.join(texts)}]", "calibrated=false")
    assert "raw probabilities (calibrated=false)" in " ".join(capsys.readouterr().out.split())
    names = list(calibrated[0]["probs"])
    for i in range(len(texts)):
        got_t = np.array([calibrated[i]["probs"][k] for k in names])
        got_raw = np.array([raw[i]["probs"][k] for k in names])
        np.testing.assert_allclose(got_t, scaled_probs(logits[i : i + 1], t)[0], atol=1e-5)
        np.testing.assert_allclose(got_raw, scaled_probs(logits[i : i + 1], 1.0)[0], atol=1e-5)
        assert calibrated[i]["label"] == raw[i]["label"]
        assert (calibrated[i]["temperature"], raw[i]["temperature"]) == (pytest.approx(t), 1.0)  # rows say which
    _infer(tmp_path, cache_dir, f"run={own_run}", "text=fine", "calibrated=true")  # a fitted checkpoint: allowed

    # weights changed after the fit: the temperature is not theirs
    weights = own_run / "checkpoints" / "best" / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    stale = _infer(tmp_path, cache_dir, f"run={own_run}", f"text={texts[1]}")
    assert "fitted to other weights" in " ".join(capsys.readouterr().out.split())
    assert stale[0]["probs"] == pytest.approx(raw[1]["probs"], abs=1e-6) and stale[0]["temperature"] == 1.0
    with pytest.raises(UserError, match="calibrated=true: .*fitted to other weights"):
        _infer(tmp_path, cache_dir, f"run={own_run}", "text=fine", "calibrated=true")


def test_fit_on_the_evaluated_split_warns_and_save_false_keeps_the_checkpoint(tmp_path, cache_dir, own_run, capsys):
    _evaluate(
        tmp_path,
        cache_dir,
        f"run={own_run}",
        "compare_ood=false",
        "diagnostics=[robustness,calibration]",
        "diagnostics.robustness.suites=[identity]",
        "diagnostics.robustness.examples=8",
        "diagnostics.calibration.fit_split=test",
        "diagnostics.calibration.save=false",
        "diagnostics.calibration.bins=10",
    )
    out = " ".join(capsys.readouterr().out.split())
    report = read_json(own_run / "eval" / "calibration.json")
    assert report["fitted_on"] == "test" and set(report["splits"]) == {"test"} and report["saved_to"] is None
    assert len(report["splits"]["test"]["reliability_after"]) == 10
    assert "optimistic" in out
    assert (own_run / "eval" / "test" / "robustness.json").is_file()  # the two diagnostics together
    assert not (own_run / "checkpoints" / "best" / "calibration.json").exists()


# ------------------------------------------------------------------ bad input
def test_bad_calibration_settings_are_one_line(tmp_path, cache_dir, finished_run, split_dir):
    from omegaconf import OmegaConf

    for settings, expected in (({"bins": 0}, "bins=0: must be >= 1"), ({"max_iter": 0}, "max_iter=0: must be >= 1")):
        cfg = OmegaConf.create({"bins": 15, "max_iter": 100, "fit_split": "validation", **settings})
        with pytest.raises(UserError, match=expected):
            check_config(cfg, "cls")
    with pytest.raises(UserError, match="fit_split=dev2 does not exist in this data; available splits: train"):
        _evaluate(
            tmp_path,
            cache_dir,
            f"run={finished_run}",
            "diagnostics=calibration",
            "diagnostics.calibration.fit_split=dev2",
        )
    # a task=gen model: refused before anything loads (this dir has a config and no weights at all)
    gen = tmp_path / "gen"
    gen.mkdir()
    (gen / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(UserError, match="calibrates class probabilities \\(task=cls\\); this is a task=gen model"):
        _evaluate(
            tmp_path, cache_dir, f"checkpoint={gen}", "data=local", f"data.path={split_dir}", "diagnostics=calibration"
        )
    with pytest.raises(UserError, match="calibrated=true: temperature scaling is for classifiers"):
        _infer(tmp_path, cache_dir, f"checkpoint={gen}", "text=hi", "calibrated=true")


def test_damaged_record_and_calibrated_true_without_a_fit(tmp_path, cache_dir, own_run):
    record = own_run / "checkpoints" / "best" / "calibration.json"
    record.write_text('{"temperature": -2}')
    with pytest.raises(UserError, match="temperature=-2 is not a positive number; re-fit it"):
        _infer(tmp_path, cache_dir, f"run={own_run}", "text=fine")
    record.write_text("{not json")
    with pytest.raises(UserError, match="calibration.json: unreadable"):
        _infer(tmp_path, cache_dir, f"run={own_run}", "text=fine")
    record.unlink()
    proc = run_cli(
        "infer", f"run={own_run}", "text=fine", "calibrated=true", cache_dir=cache_dir, cwd=tmp_path, check=False
    )
    assert_one_line_error(proc, "has no fitted temperature (calibration.json); fit one with lmreason evaluate")


def test_the_onnx_backend_applies_the_same_temperature(tmp_path, cache_dir, own_run, capsys):
    """Probabilities of every backend pass through classify_texts: onnx divides by the fitted T as torch does."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from lmreason.evaluation.calibration import TemperatureFit, save_temperature

    checkpoint = own_run / "checkpoints" / "best"
    save_temperature(checkpoint, TemperatureFit(2.5, 48, 0.7, 0.6), "validation")
    texts = "text=[the film was really great and long,the film was really dull]"
    torch_rows = _infer(tmp_path, cache_dir, f"run={own_run}", texts)
    onnx_rows = _infer(tmp_path, cache_dir, f"run={own_run}", texts, "backend=onnx")
    assert "backend onnx" in capsys.readouterr().out
    logits = _raw_logits(checkpoint, ["the film was really great and long", "the film was really dull"])
    for i, (a, b) in enumerate(zip(torch_rows, onnx_rows)):
        assert b["probs"] == pytest.approx(a["probs"], abs=1e-5)
        assert list(b["probs"].values()) == pytest.approx(scaled_probs(logits[i : i + 1], 2.5)[0].tolist(), abs=1e-5)
