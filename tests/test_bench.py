"""scripts/bench.py: the plumbing (a --quick run end to end writes its JSON and table), and the target
bookkeeping. No test looks at a time: on a shared machine timings say nothing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from conftest import REPO, cli_env


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_bench_runs_every_phase_and_writes_its_json(tmp_path):
    out = tmp_path / "results" / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--quick",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=cli_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    phases = results["phases"]
    assert set(phases) == {"ceiling", "train", "evaluate", "infer", "startup"}
    assert phases["ceiling"]["fp32_gflops"] > 0 and phases["ceiling"]["bf16_gflops"] > 0
    for comparison in ("same", "defaults"):
        for side in ("lmreason", "trainer"):
            numbers = phases["train"][comparison][side]
            assert numbers["samples_per_s"] > 0 and numbers["memory_mb"] > 0
            assert 0.0 <= numbers["accuracy"] <= 1.0
            assert len(numbers["runs"]) == 1
    # Both sides trained on the same exported subset: the same number of real tokens per epoch.
    same = phases["train"]["same"]
    assert same["lmreason"]["runs"][0]["train_tokens"] == results["data"]["train_tokens"]
    assert phases["evaluate"]["lmreason"]["samples_per_s"] > 0 and phases["evaluate"]["trainer"]["samples_per_s"] > 0
    assert phases["infer"]["lmreason"]["runs"][0]["samples"] == results["data"]["val_rows"]
    assert phases["infer"]["pipeline"]["samples_per_s"] > 0
    assert phases["startup"]["help_s"] > 0 and phases["startup"]["finetune_help_s"] > 0
    summary = results["summary"]
    for key in (
        "train_same_speedup",
        "train_defaults_speedup",
        "evaluate_speedup",
        "infer_speedup",
        "train_same_lmreason_mfu",
    ):
        assert summary[key] > 0, key
    assert {"train_same_speedup", "infer_speedup", "help_s", "mfu_fp32"} <= set(summary["targets"])
    assert len(results["load"]["start"]) == 3 and results["machine"]["cores"] >= 1
    assert "train same (fp32) samples/s" in proc.stdout and str(out) in proc.stdout


def fake_results(lm_speed: float, hf_speed: float, lm_acc: float, hf_acc: float) -> dict:
    def side(speed, acc, mem):
        return {
            "samples_per_s": speed,
            "tokens_per_s": speed * 10,
            "accuracy": acc,
            "memory_mb": mem,
            "wall_s": 1.0,
            "runs": [{"precision": "fp32"}],
        }

    return {
        "machine": {"cpu": "test cpu", "cores": 2, "torch": "x", "transformers": "y"},
        "model": {"non_embedding_params": 1_000_000},
        "load": {"start": [0.1, 0.1, 0.1], "median_1min": 0.1, "max_1min": 0.2},
        "phases": {
            "ceiling": {"fp32_gflops": 100.0, "bf16_gflops": 50.0, "device": "CPU"},
            "train": {"same": {"lmreason": side(lm_speed, lm_acc, 900), "trainer": side(hf_speed, hf_acc, 1000)}},
            "evaluate": {"lmreason": {"samples_per_s": 300.0}, "trainer": {"samples_per_s": 100.0}},
            "infer": {"lmreason": {"samples_per_s": 150.0}, "pipeline": {"samples_per_s": 100.0}},
            "startup": {"help_s": 0.2, "finetune_help_s": 4.0},
        },
    }


def test_targets_are_judged_as_the_issue_states_them():
    bench = load_bench()
    results = fake_results(lm_speed=120.0, hf_speed=100.0, lm_acc=0.800, hf_acc=0.805)
    summary = bench.summarize(results)
    targets = summary["targets"]
    assert summary["train_same_speedup"] == pytest.approx(1.2) and targets["train_same_speedup"]["met"]
    assert targets["train_same_accuracy_delta_points"]["met"]  # half a point lower: within one point
    assert targets["train_same_memory_ratio"]["met"]  # 900 MB vs 1000 MB
    assert targets["evaluate_speedup"]["met"] and not targets["infer_speedup"]["met"]  # 3x; 1.5x < 2x
    assert targets["help_s"]["met"] and not targets["finetune_help_s"]["met"]
    # MFU = 6 x params x tokens/s / rate = 6e6 x 1200 / 100e9
    assert summary["train_same_lmreason_mfu"] == pytest.approx(0.072)
    assert not targets["mfu_fp32"]["met"]
    results["summary"] = summary
    table = bench.render_table(results)
    assert "train same (fp32) samples/s" in table and "MISSED" in table and "test cpu" in table


def test_an_accuracy_two_points_lower_misses_even_when_faster():
    bench = load_bench()
    summary = bench.summarize(fake_results(lm_speed=500.0, hf_speed=100.0, lm_acc=0.78, hf_acc=0.80))
    assert summary["targets"]["train_same_speedup"]["met"]
    assert not summary["targets"]["train_same_accuracy_delta_points"]["met"]
