"""`lmreason finetune` end to end on tiny-bert: learning, early stopping, checkpoints, resume, accumulation, sweeps,
bad input.

Runs are in-process (`finetune_in_process`); the subprocesses left are a multirun and the run dir guard
(a Hydra callback, which runs only under the real CLI)."""

from __future__ import annotations

import json

import pytest
from conftest import DROPOUT_RUN, TINY_TRAIN, finetune_in_process, read_json, run_cli, run_command, write_sentiment_csv

from lmreason.errors import UserError


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(exc.value), str(exc.value)
    return str(exc.value)


def test_run_dir_holds_metrics_checkpoints_and_tensorboard(finished_run):
    metrics = read_json(finished_run / "metrics.json")
    assert metrics["status"] in ("completed", "early_stopped")
    assert metrics["val"]["val/acc"] >= 0.9  # the adjective decides the label: learnable
    losses = [h["val/loss"] for h in metrics["history"]]
    assert losses[-1] < losses[0]
    assert metrics["best_step"] in [h["step"] for h in metrics["history"]]
    for name in ("best", "last"):
        files = {p.name for p in (finished_run / "checkpoints" / name).iterdir()}
        assert {"model.safetensors", "config.json", "tokenizer.json", "trainer_state.pt", "config.yaml"} <= files
    events = list((finished_run / "tb").glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in events:
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "val/acc", "val/loss"} <= tags


def test_best_checkpoint_loads_with_plain_transformers(finished_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    best = finished_run / "checkpoints" / "best"
    model = AutoModelForSequenceClassification.from_pretrained(best)
    tokenizer = AutoTokenizer.from_pretrained(best)
    assert model.config.id2label == {0: "0", 1: "1"}
    with torch.no_grad():
        logits = model(
            **tokenizer(
                ["the film was really great and long", "the film was really awful and short"],
                return_tensors="pt",
                padding=True,
            )
        ).logits
    assert logits.argmax(-1).tolist() == [1, 0]


def test_same_config_and_seed_give_the_same_metrics(tmp_path, cache_dir, dropout_data, dropout_run):
    finetune_in_process(tmp_path / "again", cache_dir, *DROPOUT_RUN, f"data.path={dropout_data}")
    assert (
        read_json(tmp_path / "again" / "metrics.json")["history"] == read_json(dropout_run / "metrics.json")["history"]
    )


def test_resume_continues_an_interrupted_run(tmp_path, cache_dir, monkeypatch, dropout_data, dropout_run):
    partial = tmp_path / "partial"
    # A STOP fault point makes the run act as if SIGTERM arrived during step 10 (mid-epoch 2).
    monkeypatch.setenv("LMREASON_FAULT_AT", "train_step:10:STOP")
    with pytest.raises(UserError, match="resume=") as exc:
        finetune_in_process(partial, cache_dir, *DROPOUT_RUN, f"data.path={dropout_data}")
    one_line(exc)
    assert read_json(partial / "metrics.json")["status"] == "interrupted"
    monkeypatch.delenv("LMREASON_FAULT_AT")
    run_command("finetune", f"resume={partial}", "device=cpu", output_dir=tmp_path / "unused", cache_dir=cache_dir)
    resumed, uninterrupted = read_json(partial / "metrics.json"), read_json(dropout_run / "metrics.json")
    assert resumed["status"] == "completed"
    assert resumed["steps"] == uninterrupted["steps"]
    for a, b in zip(resumed["history"], uninterrupted["history"]):
        assert a["step"] == b["step"]
        assert a["val/loss"] == pytest.approx(b["val/loss"], abs=1e-5)


def test_early_stopping_stops(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 120, seed=3)
    run_dir = tmp_path / "run"
    # lr 0: nothing improves after the first validation, so patience 1 stops at the second.
    finetune_in_process(
        run_dir,
        cache_dir,
        "data=local",
        f"data.path={data}",
        "train.epochs=20",
        "optimizer.lr=1e-12",
        "train.early_stopping.patience=1",
        "train.early_stopping.monitor=val/loss",
        "train.early_stopping.mode=min",
        "train.early_stopping.min_delta=0.01",
    )
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["status"] == "early_stopped"
    assert len(metrics["history"]) == 2
    # Resuming a run that already stopped trains nothing more.
    run_command("finetune", f"resume={run_dir}", output_dir=tmp_path / "unused", cache_dir=cache_dir)
    again = read_json(run_dir / "metrics.json")
    assert again["status"] == "early_stopped" and again["steps"] == metrics["steps"]


@pytest.mark.slow  # a Hydra multirun: its own process, two trainings (test_cli covers -m in the fast suite)
def test_multirun_gives_one_complete_run_dir_per_job(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=4)
    sweep = tmp_path / "sweep"
    run_cli(
        "finetune",
        "-m",
        *TINY_TRAIN,
        "data=local",
        f"data.path={data}",
        "train.epochs=1",
        "optimizer.lr=1e-3,3e-3",
        f"hydra.sweep.dir={sweep}",
        cache_dir=cache_dir,
        cwd=tmp_path,
    )
    for job in ("0", "1"):
        assert read_json(sweep / job / "metrics.json")["status"] == "completed"
        assert (sweep / job / "checkpoints" / "best" / "model.safetensors").is_file()


def test_freezing_and_accumulation_show_in_banner(tmp_path, cache_dir, capsys):
    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=5)
    finetune_in_process(
        tmp_path / "run",
        cache_dir,
        "data=local",
        f"data.path={data}",
        "train.epochs=1",
        "regularization=[l2,freeze]",
        "regularization.freeze_layers=1",
        "train.grad_accum_steps=2",
    )
    out = capsys.readouterr().out
    assert "frozen" in out and " 0 frozen" not in out
    assert "32 = 16 per step x 2 accumulation" in out


def test_two_accumulated_micro_batches_train_like_one_batch_of_their_size(tmp_path, cache_dir):
    """2 x 16 with train.grad_accum_steps=2 gives the weights of one batch of 32 (fp32, dropout off).

    80 rows: 64 train rows, 2 optimiser steps per epoch either way. length_grouping off: each batch of 32
    is then the two micro-batches of 16 that follow it in the epoch's permutation (grouping by length
    would cut the two differently). Clipping and the schedule act on the accumulated step in both."""
    import torch
    from safetensors.torch import load_file

    data = write_sentiment_csv(tmp_path / "data.csv", 80, seed=7)
    common = [
        "data=local",
        f"data.path={data}",
        "train.epochs=2",
        "train.length_grouping=false",
        "train.early_stopping.enabled=false",
        "regularization.hidden_dropout=0",
        "regularization.attention_dropout=0",
    ]
    one = finetune_in_process(tmp_path / "one", cache_dir, *common, "train.batch_size=32")
    accumulated = finetune_in_process(
        tmp_path / "accum", cache_dir, *common, "train.batch_size=16", "train.grad_accum_steps=2"
    )
    assert one["steps"] == accumulated["steps"] == 4
    expected = load_file(tmp_path / "one" / "checkpoints" / "last" / "model.safetensors")
    weights = load_file(tmp_path / "accum" / "checkpoints" / "last" / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in weights.items():
        assert torch.allclose(tensor, expected[name], atol=1e-5, rtol=1e-4), (
            name,
            (tensor - expected[name]).abs().max(),
        )
    # The control: without accumulation, 16 per step is another training (8 steps) and other weights, so
    # the tolerance above tells the two apart.
    halves = finetune_in_process(tmp_path / "halves", cache_dir, *common, "train.batch_size=16")
    assert halves["steps"] == 8
    other = load_file(tmp_path / "halves" / "checkpoints" / "last" / "model.safetensors")
    assert any(not torch.allclose(other[name], expected[name], atol=1e-3) for name in expected)


def test_resume_of_a_missing_or_foreign_dir(tmp_path, cache_dir):
    with pytest.raises(UserError, match="no such directory") as exc:
        run_command("finetune", f"resume={tmp_path / 'nope'}", output_dir=tmp_path / "out", cache_dir=cache_dir)
    one_line(exc)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a finetune run dir") as exc:
        run_command("finetune", f"resume={tmp_path / 'foreign'}", output_dir=tmp_path / "out", cache_dir=cache_dir)
    one_line(exc)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir, monkeypatch):
    data = write_sentiment_csv(tmp_path / "data.csv", 120, seed=6)
    run_dir = tmp_path / "run"
    monkeypatch.setenv("LMREASON_FAULT_AT", "loss:3:NAN")
    with pytest.raises(UserError, match="NaN/inf at step 3") as exc:
        finetune_in_process(
            run_dir,
            cache_dir,
            "data=local",
            f"data.path={data}",
            "train.epochs=2",
            "train.eval_every_steps=1",
            "train.eval_every_epoch=false",
        )
    one_line(exc)
    state = json.loads((run_dir / "checkpoints" / "last" / "lmreason.json").read_text())
    assert state["step"] == 2
    assert read_json(run_dir / "metrics.json")["status"] == "diverged"


def test_a_new_run_never_writes_into_an_existing_run(tmp_path, cache_dir, finished_run):
    before = (finished_run / "checkpoints" / "best" / "model.safetensors").read_bytes()
    proc = run_cli(
        "finetune",
        *TINY_TRAIN,
        "data=local",
        "data.path=x.csv",
        f"hydra.run.dir={finished_run}",
        cache_dir=cache_dir,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1 and "already holds a run" in proc.stderr
    assert (finished_run / "checkpoints" / "best" / "model.safetensors").read_bytes() == before
