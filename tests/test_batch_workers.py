"""Batches side by side on the CPU's cores (lmreason/evaluation/batch_workers.py): results in batch order, each
batch under inference_mode, the precision's autocast and one intra-op thread, and `infer` / `evaluate` give the
same answers with several workers as with one (torch and onnx backends)."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import torch
from conftest import TINY_GEN_TRAIN, finetune_in_process, read_json, run_command

from lmreason.evaluation.batch_workers import batch_workers, run_batches

CPU = torch.device("cpu")
TEXTS = [f"the film was really {w} and {'long ' * (i % 5)}short" for i, w in enumerate(["great", "awful", "dull"] * 9)]


def test_results_come_back_in_batch_order_whatever_finishes_first():
    def slow_first(i):
        time.sleep(0.02 * (5 - i % 5))  # early batches finish last
        return i, threading.get_ident()

    out = list(run_batches(slow_first, range(12), CPU, "fp32", workers=3))
    assert [i for i, _ in out] == list(range(12))
    assert len({ident for _, ident in out} - {threading.get_ident()}) > 1  # really ran on several threads


def test_each_batch_runs_on_one_thread_without_grad_and_under_the_precisions_autocast():
    before = torch.get_num_threads()
    weight = torch.randn(8, 8, requires_grad=True)

    def probe(_):
        out = torch.randn(4, 8) @ weight
        return torch.get_num_threads(), out.requires_grad, out.dtype

    seen = list(run_batches(probe, range(4), CPU, "bf16", workers=2))
    assert seen == [(1, False, torch.bfloat16)] * 4
    assert torch.get_num_threads() == before  # put back


def test_a_single_batch_keeps_every_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert list(run_batches(lambda _: torch.get_num_threads(), [0], CPU, "fp32", workers=2)) == [2]
    finally:
        torch.set_num_threads(before)


def test_an_error_in_a_batch_reaches_the_caller_and_threads_are_put_back():
    before = torch.get_num_threads()

    def fails_on_3(i):
        if i == 3:
            raise ValueError("batch 3 is bad")
        return i

    with pytest.raises(ValueError, match="batch 3 is bad"):
        list(run_batches(fails_on_3, range(8), CPU, "fp32", workers=2))
    assert torch.get_num_threads() == before


def test_one_worker_per_cpu_thread_and_one_on_other_devices_or_with_spinning_threads(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
        assert batch_workers(CPU) == 2
        assert batch_workers(torch.device("cuda")) == 1
        monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # spinning threads would take the workers' cores
        assert batch_workers(CPU) == 1
    finally:
        torch.set_num_threads(before)


def infer_rows(run, threads: int, *extra: str, tmp_path, cache_dir):
    return run_command(
        "infer",
        f"run={run}",
        f"text={TEXTS}",
        "batch_size=4",
        f"device.threads={threads}",
        *extra,
        output_dir=tmp_path / "out",
        cache_dir=cache_dir,
    )


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_infer_gives_the_same_rows_with_two_workers_as_with_one(backend, finished_run, tmp_path, cache_dir, capsys):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("onnx", "eval"))
    one = infer_rows(run, 1, f"backend={backend}", tmp_path=tmp_path, cache_dir=cache_dir)
    capsys.readouterr()
    two = infer_rows(run, 2, f"backend={backend}", tmp_path=tmp_path, cache_dir=cache_dir)
    assert "2 batches at once" in " ".join(capsys.readouterr().out.split())
    assert [r["text"] for r in two] == [r["text"] for r in one] == TEXTS
    assert [r["label"] for r in two] == [r["label"] for r in one]
    for a, b in zip(one, two):
        assert b["probs"] == pytest.approx(a["probs"], abs=1e-6)


def test_evaluate_gives_the_same_metrics_and_predictions_with_two_workers(finished_run, tmp_path, cache_dir):
    results = {}
    for threads in (1, 2):
        run = tmp_path / f"run{threads}"
        shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("onnx", "eval"))
        results[threads] = run_command(
            "evaluate",
            f"run={run}",
            "batch_size=4",
            f"device.threads={threads}",
            output_dir=tmp_path / "out",
            cache_dir=cache_dir,
        )
        lines = (run / "eval" / "test" / "predictions.jsonl").read_text().splitlines()
        results[threads]["rows"] = [json.loads(line) for line in lines]
    for split in ("test", "ood"):
        assert results[2][split]["acc"] == results[1][split]["acc"]
        assert results[2][split]["loss"] == pytest.approx(results[1][split]["loss"], abs=1e-6)
    for a, b in zip(results[1]["rows"], results[2]["rows"], strict=True):
        assert (b["text"], b["label"], b["predicted"]) == (a["text"], a["label"], a["predicted"])
        assert b["confidence"] == pytest.approx(a["confidence"], abs=1e-6)


def test_classify_texts_puts_the_thread_count_back(finished_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmreason.evaluation.predict import InferenceSession, classify_texts

    best = finished_run / "checkpoints" / "best"
    model = AutoModelForSequenceClassification.from_pretrained(best).eval()
    session = InferenceSession(model, AutoTokenizer.from_pretrained(best), CPU, "fp32", 4, 32)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        probs = classify_texts(session, TEXTS)
        assert probs.shape == (len(TEXTS), 2) and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


VALIDATED = {  # each task's evaluate: classification, generation, multi-task heads
    "cls": ["data=reasoning", "data.sizes={train: 48, validation: 40, test: 8, ood: 8}", "train.eval_batch_size=8"],
    "gen": [*TINY_GEN_TRAIN[1:], "data.sizes={train: 16, validation: 24, test: 8, ood: 8}", "train.eval_batch_size=4"],
    "multi": [
        "task=multi",
        "task.tasks={a: {data: reasoning, sizes: {train: 32, validation: 24, test: 8, ood: 8}}, "
        "b: {data: reasoning, seed: 5, sizes: {train: 24, validation: 16, test: 8, ood: 8}}}",
        "train.eval_batch_size=8",
    ],
}


@pytest.mark.parametrize("task", list(VALIDATED))
def test_validation_runs_batches_side_by_side_with_a_plain_loops_metrics(task, tmp_path, cache_dir, monkeypatch):
    """finetune's validation computes its batches side by side on the shards' worker threads, and every metric it
    reports (and so early stopping and the best checkpoint) is what one batch at a time gives."""
    import lmreason.evaluation.batch_workers as workers

    overrides = [*VALIDATED[task], "train.epochs=2", "train.early_stopping.enabled=false", "device.threads=2"]
    if task == "gen":
        overrides.insert(0, "model=tiny-gpt")
    threads = set()
    real = workers.run_batches

    def recorded(fn, batches, *args, **kwargs):
        def noted(batch):
            threads.add(threading.current_thread().name.split("_")[0])
            return fn(batch)

        return real(noted, batches, *args, **kwargs)

    monkeypatch.setattr(workers, "run_batches", recorded)
    finetune_in_process(tmp_path / "side", cache_dir, *overrides)
    fast_paths = read_json(tmp_path / "side" / "metrics.json")["fast_paths"]
    # the shards' workers where they train (validation reuses their freed memory), else a pool of its own
    assert threads == {"lmreason-shard" if "batch_shards" in fast_paths["applied"] else "lmreason-batch"}
    threads.clear()
    monkeypatch.setattr(workers, "batch_workers", lambda device: 1)
    finetune_in_process(tmp_path / "loop", cache_dir, *overrides)
    assert threads == {"MainThread"}
    side, loop = (read_json(tmp_path / run / "metrics.json")["history"] for run in ("side", "loop"))
    assert len(side) == len(loop) == 2
    for a, b in zip(side, loop):
        assert a.keys() == b.keys()
        for key in a:
            if key.startswith("val/"):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), key
