"""`lmreason finetune` end to end on tiny-bert: learning, early stopping, checkpoints, resume, sweeps, bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import TINY_TRAIN, read_json, run_cli, write_sentiment_csv


def finetune(tmp_path, cache_dir, run_dir, *overrides, check=True):
    return run_cli("finetune", *TINY_TRAIN, *overrides, f"hydra.run.dir={run_dir}", cache_dir=cache_dir, cwd=tmp_path, check=check)


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
        logits = model(**tokenizer(["the film was really great and long", "the film was really awful and short"],
                                   return_tensors="pt", padding=True)).logits
    assert logits.argmax(-1).tolist() == [1, 0]


def test_same_config_and_seed_give_the_same_metrics(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 100, seed=11)
    args = ["data=local", f"data.path={data}", "train.epochs=2", "regularization=dropout"]
    finetune(tmp_path, cache_dir, tmp_path / "a", *args)
    finetune(tmp_path, cache_dir, tmp_path / "b", *args)
    assert read_json(tmp_path / "a" / "metrics.json")["history"] == read_json(tmp_path / "b" / "metrics.json")["history"]


def test_resume_continues_an_interrupted_run(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 160, seed=12)
    args = ["data=local", f"data.path={data}", "train.epochs=3", "train.early_stopping.enabled=false", "regularization=dropout"]
    full = tmp_path / "full"
    finetune(tmp_path, cache_dir, full, *args)
    partial = tmp_path / "partial"
    # A STOP fault point makes the run act as if SIGTERM arrived during step 10 (mid-epoch 2).
    proc = run_cli("finetune", *TINY_TRAIN, *args, f"hydra.run.dir={partial}", cache_dir=cache_dir, cwd=tmp_path, check=False,
                   env_extra={"LMREASON_FAULT_AT": "train_step:10:STOP"})
    assert proc.returncode == 1 and "resume=" in proc.stderr
    assert read_json(partial / "metrics.json")["status"] == "interrupted"
    run_cli("finetune", f"resume={partial}", "device=cpu", cache_dir=cache_dir, cwd=tmp_path)
    resumed, uninterrupted = read_json(partial / "metrics.json"), read_json(full / "metrics.json")
    assert resumed["status"] == "completed"
    assert resumed["steps"] == uninterrupted["steps"]
    for a, b in zip(resumed["history"], uninterrupted["history"]):
        assert a["step"] == b["step"]
        assert a["val/loss"] == pytest.approx(b["val/loss"], abs=1e-5)


def test_early_stopping_stops(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 120, seed=3)
    run_dir = tmp_path / "run"
    # lr 0: nothing improves after the first validation, so patience 1 stops at the second.
    finetune(tmp_path, cache_dir, run_dir, "data=local", f"data.path={data}", "train.epochs=20", "optimizer.lr=1e-12",
             "train.early_stopping.patience=1", "train.early_stopping.monitor=val/loss", "train.early_stopping.mode=min",
             "train.early_stopping.min_delta=0.01")
    metrics = read_json(run_dir / "metrics.json")
    assert metrics["status"] == "early_stopped"
    assert len(metrics["history"]) == 2
    # Resuming a run that already stopped trains nothing more.
    run_cli("finetune", f"resume={run_dir}", cache_dir=cache_dir, cwd=tmp_path)
    again = read_json(run_dir / "metrics.json")
    assert again["status"] == "early_stopped" and again["steps"] == metrics["steps"]


def test_multirun_gives_one_complete_run_dir_per_job(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=4)
    sweep = tmp_path / "sweep"
    run_cli("finetune", "-m", *TINY_TRAIN, "data=local", f"data.path={data}", "train.epochs=1", "optimizer.lr=1e-3,3e-3",
            f"hydra.sweep.dir={sweep}", cache_dir=cache_dir, cwd=tmp_path)
    for job in ("0", "1"):
        assert read_json(sweep / job / "metrics.json")["status"] == "completed"
        assert (sweep / job / "checkpoints" / "best" / "model.safetensors").is_file()


def test_freezing_and_accumulation_show_in_banner(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=5)
    out = finetune(tmp_path, cache_dir, tmp_path / "run", "data=local", f"data.path={data}", "train.epochs=1",
                   "regularization=[l2,freeze]", "regularization.freeze_layers=1", "train.grad_accum_steps=2").stdout
    assert "frozen" in out and " 0 frozen" not in out
    assert "32 = 16 per step x 2 accumulation" in out


def test_resume_of_a_missing_or_foreign_dir(tmp_path, cache_dir):
    proc = run_cli("finetune", f"resume={tmp_path / 'nope'}", cache_dir=cache_dir, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "no such directory" in proc.stderr
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    proc = run_cli("finetune", f"resume={tmp_path / 'foreign'}", cache_dir=cache_dir, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "not a finetune run dir" in proc.stderr
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 120, seed=6)
    run_dir = tmp_path / "run"
    proc = run_cli("finetune", *TINY_TRAIN, "data=local", f"data.path={data}", "train.epochs=2",
                   "train.eval_every_steps=1", "train.eval_every_epoch=false", f"hydra.run.dir={run_dir}",
                   cache_dir=cache_dir, cwd=tmp_path, check=False, env_extra={"LMREASON_FAULT_AT": "loss:3:NAN"})
    assert proc.returncode == 1
    assert "NaN/inf at step 3" in proc.stderr and "Traceback" not in proc.stderr
    state = json.loads((run_dir / "checkpoints" / "last" / "lmreason.json").read_text())
    assert state["step"] == 2
    assert read_json(run_dir / "metrics.json")["status"] == "diverged"


def test_a_new_run_never_writes_into_an_existing_run(tmp_path, cache_dir, finished_run):
    before = (finished_run / "checkpoints" / "best" / "model.safetensors").read_bytes()
    proc = run_cli("finetune", *TINY_TRAIN, "data=local", "data.path=x.csv", f"hydra.run.dir={finished_run}",
                   cache_dir=cache_dir, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "already holds a run" in proc.stderr
    assert (finished_run / "checkpoints" / "best" / "model.safetensors").read_bytes() == before
