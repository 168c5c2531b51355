"""task=multi: one shared encoder, one head per task; sampling, per-task metrics, checkpoints, heads, evaluate."""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    assert_one_line_error,
    finetune_in_process,
    read_json,
    run_cli,
    run_command,
    tensorboard_scalar_tags,
    write_sentiment_csv,
)

from lmreason.errors import UserError
from lmreason.tasks.multi_sampling import multitask_batches, task_probabilities

SYLLOGISM = "syllogism: {data: reasoning, sizes: {train: 96, validation: 32, test: 32, ood: 32}}"


def write_topic_csv(path: Path, n: int = 120, seed: int = 0) -> Path:
    """Three labels (its own label set, unlike the sentiment task's 0/1): the noun decides the topic."""
    rng = random.Random(seed)
    words = {
        "sport": ["match", "goal", "team"],
        "money": ["bank", "price", "market"],
        "science": ["atom", "cell", "lab"],
    }
    lines = ["text,label"]
    for i in range(n):
        label = list(words)[i % 3]
        lines.append(f"today the {rng.choice(words[label])} was in the news,{label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def tasks_override(sentiment: Path) -> str:
    return f"task.tasks={{{SYLLOGISM}, sent: {{data: local, path: {sentiment}}}}}"


@pytest.fixture(scope="module")
def multi_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multi-data")
    write_sentiment_csv(root / "sent.csv", 160, seed=21)
    return root / "sent.csv"


# threads pinned: with more than one, batch shards train (other dropout masks than one thread draws), so a
# resumed run matches the uninterrupted one only at the same thread count, whatever the load at start
MULTI_RUN = ["task=multi", "train.epochs=4", "train.early_stopping.enabled=false", "device.threads=2"]


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory, cache_dir, multi_data) -> Path:
    """syllogism (96 train, with OOD) + sentiment (128 train), 4 epochs of 14 single-task batches."""
    run_dir = tmp_path_factory.mktemp("multi-run") / "run"
    finetune_in_process(run_dir, cache_dir, *MULTI_RUN, tasks_override(multi_data))
    return run_dir


# --------------------------------------------------------------------------- the sampling rule
def plan_shares(sizes, sampling, temperature, batch_size=8, epoch=0):
    task_of_row = np.repeat(np.arange(len(sizes)), sizes)
    lengths = np.random.default_rng(0).integers(3, 30, len(task_of_row))
    batches = multitask_batches(task_of_row, lengths, batch_size, 7, epoch, (sampling, temperature))
    tasks = [set(task_of_row[b].tolist()) for b in batches]
    assert all(len(t) == 1 for t in tasks)  # every batch holds one task's rows
    counts = np.bincount([t.pop() for t in tasks], minlength=len(sizes))
    return batches, counts / counts.sum()


def test_proportional_sampling_shares_batches_by_size_and_covers_every_row_once():
    sizes = [800, 200, 40]
    assert task_probabilities(sizes, "proportional") == pytest.approx([800 / 1040, 200 / 1040, 40 / 1040])
    batches, shares = plan_shares(sizes, "proportional", 1.0)
    assert len(batches) == 100 + 25 + 5  # one pass over every task
    assert shares == pytest.approx([100 / 130, 25 / 130, 5 / 130])
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(sum(sizes)))  # each example exactly once per epoch


def test_temperature_sampling_follows_n_to_the_one_over_t():
    sizes = [800, 200, 40]
    expected = np.sqrt(sizes) / np.sqrt(sizes).sum()  # T = 2
    assert task_probabilities(sizes, "temperature", 2.0) == pytest.approx(expected)
    batches, shares = plan_shares(sizes, "temperature", 2.0)
    assert len(batches) == 130  # an epoch is as long as under proportional sampling
    assert shares == pytest.approx(expected, abs=1 / 130)  # quotas are rounded to whole batches
    assert shares[2] > 5 / 130 * 2  # the small task is drawn far more often than its size says
    # T = 1 is proportional; a large T is near uniform
    assert task_probabilities(sizes, "temperature", 1.0) == pytest.approx(task_probabilities(sizes, "proportional"))
    assert task_probabilities(sizes, "temperature", 100.0) == pytest.approx([1 / 3] * 3, abs=0.03)


def test_the_plan_is_a_function_of_seed_and_epoch():
    task_of_row, lengths = np.repeat([0, 1], [50, 20]), np.arange(70) % 9 + 1
    plan = lambda seed, epoch: multitask_batches(task_of_row, lengths, 8, seed, epoch, ("temperature", 3.0))  # noqa: E731
    same = [np.array_equal(a, b) for a, b in zip(plan(1, 0), plan(1, 0))]
    assert all(same)  # a resume replays it
    assert [b.tolist() for b in plan(1, 0)] != [b.tolist() for b in plan(1, 1)]  # a new order each epoch
    assert [b.tolist() for b in plan(1, 0)] != [b.tolist() for b in plan(2, 0)]


# --------------------------------------------------------------------------- training
def test_per_task_validation_metrics_and_their_mean(multi_run):
    metrics = read_json(multi_run / "metrics.json")
    assert metrics["status"] == "completed" and metrics["steps"] == 56  # (ceil(96/16) + ceil(128/16)) x 4 epochs
    for entry in metrics["history"]:
        for key in ("acc", "f1_macro", "loss", "ece"):
            per_task = [entry[f"val/syllogism/{key}"], entry[f"val/sent/{key}"]]
            assert entry[f"val/{key}"] == pytest.approx(np.mean(per_task))  # the mean early stopping watches
    assert metrics["monitor"] == "val/acc"
    assert read_json(multi_run / "checkpoints" / "best" / "lmreason.json")["label_names"] == {
        "syllogism": ["No", "Yes"],
        "sent": ["0", "1"],
    }


class Collect(logging.Handler):
    """Every message of a logger (not a StreamHandler: finetune keeps its file-only lines off those)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_monitor_one_named_task(tmp_path, cache_dir, multi_data):
    run_dir, collect = tmp_path / "run", Collect()
    logger = logging.getLogger("lmreason.training.trainer")
    logger.addHandler(collect)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        monitor = "task.monitor=val/sent/acc"
        results = finetune_in_process(
            run_dir, cache_dir, "task=multi", "train.max_steps=4", monitor, tasks_override(multi_data)
        )
    finally:
        logger.removeHandler(collect)
        logger.setLevel(level)
    assert results["monitor"] == "val/sent/acc"
    assert results["best_metric"] == max(h["val/sent/acc"] for h in results["history"])
    # finetune.log's summary names each task's data, not the unused top-level data option
    (data_line,) = [m for m in collect.messages if m.startswith("data: ")]
    assert data_line.startswith("data: multi-task: syllogism (") and ", sent (" in data_line


def test_resume_is_exact(tmp_path, cache_dir, monkeypatch, multi_data, multi_run):
    partial = tmp_path / "partial"
    monkeypatch.setenv("LMREASON_FAULT_AT", "train_step:33:STOP")  # mid-epoch 3: heads and optimizer restored
    with pytest.raises(UserError, match="resume="):
        finetune_in_process(partial, cache_dir, *MULTI_RUN, tasks_override(multi_data))
    monkeypatch.delenv("LMREASON_FAULT_AT")
    run_command("finetune", f"resume={partial}", output_dir=tmp_path / "unused", cache_dir=cache_dir)
    resumed, uninterrupted = read_json(partial / "metrics.json"), read_json(multi_run / "metrics.json")
    assert resumed["steps"] == uninterrupted["steps"] == 56
    for a, b in zip(resumed["history"], uninterrupted["history"], strict=True):
        for key in ("val/syllogism/loss", "val/sent/loss", "val/acc"):
            assert a[key] == pytest.approx(b[key], abs=1e-5)


# --------------------------------------------------------------------------- checkpoints and heads
def tokenized(checkpoint: Path, texts: list[str]):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def test_checkpoint_holds_every_head_and_each_exports_as_a_plain_classifier(multi_run):
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification

    from lmreason.tasks import get_task

    best = multi_run / "checkpoints" / "best"
    cfg = OmegaConf.load(best / "config.yaml")
    multi = get_task(cfg.task).load_model(best, cfg).eval()
    assert multi.heads[1].base_model is multi.heads[0].base_model  # one encoder, shared
    inputs = tokenized(best, ["All cats are animals. Some animals are cats.", "the film was really great"])
    with torch.no_grad():
        for index, name in enumerate(["syllogism", "sent"]):
            plain = AutoModelForSequenceClassification.from_pretrained(best / "heads" / name).eval()
            expected = torch.softmax(multi(head=name, **inputs).logits, -1)
            assert torch.allclose(torch.softmax(plain(**inputs).logits, -1), expected, atol=1e-6)
            assert plain.config.id2label == {0: ["No", "0"][index], 1: ["Yes", "1"][index]}
        other = torch.softmax(multi(head="sent", **inputs).logits, -1)
        assert not torch.allclose(torch.softmax(multi(head="syllogism", **inputs).logits, -1), other)


def test_an_exported_head_reproduces_the_runs_validation_numbers(multi_run, tmp_path, cache_dir):
    """The plain head dir, evaluated as any checkpoint, gives the val/<task>/acc the run logged at that step."""
    last = multi_run / "checkpoints" / "last"
    logged = read_json(last / "lmreason.json")["metrics"]
    results = run_command(
        "evaluate",
        f"checkpoint={last / 'heads' / 'sent'}",
        "split=validation",
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    assert results["validation"]["acc"] == pytest.approx(logged["val/sent/acc"])
    assert results["validation"]["loss"] == pytest.approx(logged["val/sent/loss"], abs=1e-5)


# --------------------------------------------------------------------------- evaluate
def test_evaluate_reports_per_task_with_each_tasks_ood_gap(multi_run, tmp_path, cache_dir):
    results = run_command("evaluate", f"run={multi_run}", output_dir=tmp_path, cache_dir=cache_dir)
    assert set(results) == {"syllogism", "sent"}
    assert set(results["syllogism"]) == {"test", "ood", "gap"}  # the reasoning data has an OOD split
    assert set(results["sent"]) == {"test"}  # one CSV split at random: no OOD
    gap = results["syllogism"]["gap"]["acc"]
    assert gap["gap"] == pytest.approx(results["syllogism"]["test"]["acc"] - results["syllogism"]["ood"]["acc"])
    summary = read_json(multi_run / "eval" / "multitask.json")["heads"]
    assert summary["syllogism"]["acc_gap"] == pytest.approx(gap["gap"]) and summary["sent"]["ood_acc"] is None
    assert (multi_run / "eval" / "syllogism" / "gap.json").is_file()
    assert read_json(multi_run / "eval" / "sent" / "test" / "metrics.json")["n"] == 16


def test_each_heads_tensorboard_keys_carry_its_name(multi_run, tmp_path, cache_dir):
    """Two heads evaluated into one run's TensorBoard: headline metrics and diagnostics stay apart per head."""
    run = tmp_path / "run"
    shutil.copytree(multi_run, run, ignore=shutil.ignore_patterns("eval", "tb"))
    run_command(
        "evaluate",
        f"run={run}",
        "diagnostics=calibration",
        "diagnostics.calibration.save=false",
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    tags = tensorboard_scalar_tags(run)
    for head in ("syllogism", "sent"):
        assert {f"{head}/test/acc", f"{head}/calibration/temperature", f"{head}/calibration/test/ece_after"} <= tags
    assert not any(tag.startswith(("calibration/", "test/")) for tag in tags)  # nothing without a head


def test_evaluate_one_head_and_a_head_that_does_not_exist(multi_run, tmp_path, cache_dir):
    results = run_command("evaluate", f"run={multi_run}", "head=sent", output_dir=tmp_path, cache_dir=cache_dir)
    assert list(results) == ["sent"]
    with pytest.raises(UserError, match="head=rte: no such head in .*; its heads are syllogism, sent") as exc:
        run_command("evaluate", f"run={multi_run}", "head=rte", output_dir=tmp_path, cache_dir=cache_dir)
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="is a multi-task .* with heads sent, syllogism; give one head"):
        run_command("infer", f"run={multi_run}", "text=hello", output_dir=tmp_path, cache_dir=cache_dir)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "tasks,message",
    [
        (f"{{{SYLLOGISM}}}", r"task.tasks has one task \(syllogism\); multi-task training needs at least two"),
        ("{RTE: {data: reasoning}, rte: {data: reasoning}}", "names RTE and rte clash"),
        ("{nli-1: {data: reasoning}, nli_1: {data: reasoning}}", "names nli-1 and nli_1 clash"),
        ("{a: {data: reasoning}, b: {data: lokal}}", "task.tasks.b.data=lokal: not a data option; choose one of"),
        ("{a: {data: reasoning}, b: {path: x.csv}}", "task.tasks.b: give the data option it uses"),
        (
            "{a: {data: reasoning}, b: {data: local, pth: x.csv}}",
            r"task.tasks.b.pth: Key 'pth' not in 'LocalDataConfig'",
        ),
        ("{a: {data: reasoning}, b: {data: local}}", "task.tasks.b.path is required by data=local"),
        ("{a: {data: reasoning, task: nope}, b: {data: reasoning}}", "task.tasks.a: "),
    ],
)
def test_bad_multitask_configs_fail_in_one_line_before_any_data_is_prepared(tmp_path, tasks, message):
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match=message) as exc:
        finetune_in_process(tmp_path / "run", cache, "task=multi", f"task.tasks={tasks}")
    assert "\n" not in str(exc.value)
    assert not (cache / "prepared").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_bad_sampling_and_monitor(tmp_path, multi_data):
    with pytest.raises(UserError, match=r"task.temperature=0.0: must be > 0"):
        finetune_in_process(
            tmp_path / "r",
            tmp_path,
            "task=multi",
            tasks_override(multi_data),
            "task.sampling=temperature",
            "task.temperature=0",
        )
    with pytest.raises(UserError, match=r"task.monitor=val/rte/acc: not a multi-task metric"):
        finetune_in_process(
            tmp_path / "r", tmp_path, "task=multi", tasks_override(multi_data), "task.monitor=val/rte/acc"
        )
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as exc:  # a closed choice: Hydra refuses it at compose time
        finetune_in_process(tmp_path / "r", tmp_path, "task=multi", tasks_override(multi_data), "task.sampling=uniform")
    assert "Invalid value 'uniform', expected one of [proportional, temperature]" in str(exc.value.__cause__)


def test_cli_one_line_error_for_a_single_task(tmp_path, cache_dir):
    proc = run_cli(
        "finetune", "model=tiny-bert", "task=multi", "task.tasks={only: {data: reasoning}}",
        cache_dir=cache_dir, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert_one_line_error(proc, "task.tasks has one task (only)")
