"""Reliability: kills and resumes, concurrent prepares, bad configs, NaN steps, hostile run dirs, full disks.

Faults are injected at named points (`lmreason/faults.py`: LMREASON_FAULT_AT=<point>:<n>:<action>), so a
kill lands inside a training step, a validation or a checkpoint write every time, not at a random moment.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    TINY_TRAIN,
    cli_env,
    compose_command,
    finetune_in_process,
    read_json,
    run_cli,
    run_command,
    write_sentiment_csv,
)
from omegaconf import OmegaConf, open_dict

from lmreason.errors import UserError


# --------------------------------------------------------------------------- helpers
def checkpoint_step(checkpoint: Path) -> int:
    """The step of a checkpoint that loads the way resume/evaluate load it (safetensors, weights_only state)."""
    from transformers import AutoModelForSequenceClassification

    from lmreason.training.checkpoint import load_trainer_state

    AutoModelForSequenceClassification.from_pretrained(checkpoint, use_safetensors=True)
    return load_trainer_state(checkpoint)["step"]


def weights(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    import torch

    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), f"{a} and {b} differ"


class WritesAFile:
    """Unpickling this calls open(marker, "w"): the file's existence proves the pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------- 1. kill and resume
@pytest.mark.slow
def test_killed_anywhere_resumes_to_the_same_weights_and_metrics(tmp_path, cache_dir):
    """One run killed (SIGKILL) in a training step, in a validation, half way through a checkpoint write and
    between the renames of a checkpoint swap; then stopped by SIGTERM; then hit by a full disk. Resumed after
    each, it ends with exactly the weights and metrics of a run never interrupted (CPU, fp32: bit for bit)."""
    data = write_sentiment_csv(tmp_path / "data.csv", 96, seed=21)
    # 77 train rows / batch 16 = 5 steps per epoch, 15 steps; a checkpoint every 3 steps; dropout on.
    args = [
        *TINY_TRAIN,
        "data=local",
        f"data.path={data}",
        "train.epochs=3",
        "train.eval_every_steps=3",
        "train.eval_every_epoch=false",
        "train.eval_batch_size=4",
        "train.early_stopping.enabled=false",
        "regularization=dropout",
    ]
    full, run = tmp_path / "full", tmp_path / "run"
    run_cli("finetune", *args, f"hydra.run.dir={full}", cache_dir=cache_dir, cwd=tmp_path)
    last, best = run / "checkpoints" / "last", run / "checkpoints" / "best"

    def stage(fault: str, *, first: bool = False) -> subprocess.CompletedProcess:
        command = ["finetune", *args, f"hydra.run.dir={run}"] if first else ["finetune", f"resume={run}"]
        return run_cli(*command, cache_dir=cache_dir, cwd=tmp_path, check=False, env_extra={"LMREASON_FAULT_AT": fault})

    # Killed between backward and optimizer step of step 5: the step-3 checkpoint is there.
    assert stage("train_step:5:KILL", first=True).returncode == -signal.SIGKILL
    assert checkpoint_step(last) == 3
    # Resumed at 3, killed inside the validation of step 9 (after its first batch).
    assert stage("validation:2:KILL").returncode == -signal.SIGKILL
    assert checkpoint_step(last) == 6
    # Resumed at 6, killed half way through writing the step-12 checkpoint: step 9's stays, the half is a temp dir.
    assert stage("checkpoint_write:2:KILL").returncode == -signal.SIGKILL
    assert checkpoint_step(last) == 9
    assert list(last.parent.glob(".last.tmp-*"))
    # Resumed at 9 (the half-written dir is discarded), killed after step 12's save moved step 9's aside.
    assert stage("checkpoint_swap:1:KILL").returncode == -signal.SIGKILL
    assert not last.exists()
    aside = list(last.parent.glob(".last.old-*"))
    assert len(aside) == 1 and checkpoint_step(aside[0]) == 9  # complete: resume and evaluate put it back
    # Resumed at 9 (put back), SIGTERM during step 11: it finishes the step, saves and says how to go on.
    proc = stage("train_step:2:TERM")
    assert proc.returncode == 1
    assert (
        f"stopped by SIGTERM at step 11; checkpoint saved. Continue with: lmreason finetune resume={run}" in proc.stderr
    )
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert checkpoint_step(last) == 11 and read_json(run / "metrics.json")["status"] == "interrupted"
    # Resumed at 11, the disk is full when the step-12 checkpoint is written: a clear line, step 11's intact.
    before = {p.name: p.read_bytes() for p in last.iterdir()}
    proc = stage("checkpoint_write:1:ENOSPC")
    assert (
        proc.returncode == 1
        and "No space left on device" in proc.stderr
        and "previous checkpoint is kept" in proc.stderr
    )
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert {p.name: p.read_bytes() for p in last.iterdir()} == before
    assert not list(last.parent.glob(".last.*"))
    # Resumed at 11 to the end: the same run as the one never interrupted.
    run_cli("finetune", f"resume={run}", cache_dir=cache_dir, cwd=tmp_path)
    resumed, uninterrupted = read_json(run / "metrics.json"), read_json(full / "metrics.json")
    assert resumed["status"] == uninterrupted["status"] == "completed"
    assert resumed["history"] == uninterrupted["history"]  # every validation metric, exactly
    assert (resumed["steps"], resumed["best_step"], resumed["best_metric"]) == (
        uninterrupted["steps"],
        uninterrupted["best_step"],
        uninterrupted["best_metric"],
    )
    assert_same_weights(last, full / "checkpoints" / "last")
    assert_same_weights(best, full / "checkpoints" / "best")
    assert sorted(p.name for p in last.parent.iterdir()) == ["best", "last"]  # nothing half-written left


def test_a_run_killed_before_its_first_checkpoint_says_so_on_resume(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / ".last.tmp-0123abcd").mkdir(parents=True)  # what a kill in the first save leaves
    with pytest.raises(UserError) as exc:
        finetune_in_process(tmp_path / "out", cache_dir, f"resume={run_dir}")
    assert "stopped before its first checkpoint was complete; nothing to resume" in one_line(exc)


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, cache_dir, monkeypatch):
    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=22)
    monkeypatch.setenv("LMREASON_FAULT_AT", "train_step:2:INT")  # Ctrl-C during step 2
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(UserError) as exc:
            finetune_in_process(tmp_path / "out", cache_dir, "data=local", f"data.path={data}", "train.epochs=2")
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    run_dir = tmp_path / "out"
    assert (
        f"stopped by SIGINT at step 2; checkpoint saved. Continue with: lmreason finetune resume={run_dir}"
        in one_line(exc)
    )
    assert checkpoint_step(run_dir / "checkpoints" / "last") == 2


# --------------------------------------------------------------------------- 2. nothing overwritten
@pytest.mark.slow
def test_two_processes_preparing_the_same_data_at_once_share_one_intact_cache(tmp_path):
    data = write_sentiment_csv(tmp_path / "data.csv", 80, seed=23)
    cache = tmp_path / "cache"
    # Both build the cache and meet right before renaming it into place: the race a multirun makes.
    env = {**cli_env(cache), "LMREASON_RENDEZVOUS": f"prepare_write:{tmp_path / 'meet'}:2"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lmreason",
                "prepare",
                "model=tiny-bert",
                "data=local",
                f"data.path={data}",
                f"hydra.run.dir={tmp_path / f'out{i}'}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert len(list((tmp_path / "meet").iterdir())) == 2  # both really got to the rename
    entries = list((cache / "prepared").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith("."), entries  # one cache, no temp or trash dirs
    from lmreason.data.prepare import load_prepared

    prepared = load_prepared(entries[0])
    assert sum(len(split) for split in prepared.splits.values()) == 80 and prepared.label_names == ["0", "1"]


def test_a_new_run_leaves_an_existing_run_dir_untouched(tmp_path, cache_dir, finished_run):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = run_cli(
        "finetune",
        *TINY_TRAIN,
        "data=local",
        "data.path=x.csv",
        f"hydra.run.dir={run_dir}",
        cache_dir=cache_dir,
        cwd=tmp_path,
        check=False,
    )
    assert (
        proc.returncode == 1
        and f"already holds a run; start a new one or resume it with resume={run_dir}" in proc.stderr
    )
    assert proc.stderr.strip().count("\n") == 0
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before  # .hydra/ and the log too


# --------------------------------------------------------------------------- 4. bad config fails first
BAD_FINETUNE_CONFIGS = {
    "fp16 on the CPU": (["device.precision=fp16"], "device.precision=fp16 needs a CUDA GPU"),
    "more frozen layers than the model has": (
        ["regularization.freeze_layers=3"],
        "regularization.freeze_layers=3: the model has 2 layers; use 0..2",
    ),
    "negative frozen layers": (["regularization.freeze_layers=-1"], "regularization.freeze_layers=-1"),
    "accumulation of 0": (["train.grad_accum_steps=0"], "train.grad_accum_steps=0: must be >= 1"),
    "logging every 0 steps": (["train.log_every_steps=0"], "train.log_every_steps=0: must be >= 1"),
    "a monitor the task never reports": (
        ["train.early_stopping.monitor=val/accuracy"],
        "train.early_stopping.monitor=val/accuracy is not a validation metric",
    ),
    "a negative learning rate": (["optimizer.lr=-0.1"], "optimizer.lr=-0.1"),
    "no clipping bound": (["train.max_grad_norm=0"], "train.max_grad_norm=0"),
    "an OOD share of one file": (["+data.split_ratios.ood=0.1"], "data.split_ratios.ood=0.1: a random share of"),
}


@pytest.mark.parametrize("case", list(BAD_FINETUNE_CONFIGS))
def test_bad_finetune_config_fails_before_any_work(tmp_path, case):
    overrides, expected = BAD_FINETUNE_CONFIGS[case]
    data = write_sentiment_csv(tmp_path / "data.csv", 40)
    cache = tmp_path / "cache"  # its own: nothing may be prepared in it
    with pytest.raises(UserError) as exc:
        finetune_in_process(tmp_path / "out", cache, "data=local", f"data.path={data}", *overrides)
    assert expected in one_line(exc)
    assert not (cache / "prepared").exists()  # no data was tokenized or cached
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_bad_config_on_the_command_line_is_one_line_and_writes_nothing(tmp_path):
    data = write_sentiment_csv(tmp_path / "data.csv", 40)
    proc = run_cli(
        "finetune",
        *TINY_TRAIN,
        "data=local",
        f"data.path={data}",
        "device.precision=fp16",
        f"hydra.run.dir={tmp_path / 'run'}",
        cache_dir=tmp_path / "cache",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1 and "device.precision=fp16 needs a CUDA GPU; on the CPU use bf16 or fp32" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "cache" / "prepared").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    "data",
    [["data=local", "data.path={csv}"], ["data=reasoning", "data.ood_config=null"]],
    ids=["one file", "reasoning without ood_config"],
)
def test_evaluating_an_ood_split_of_data_without_one_fails_before_loading(tmp_path, cache_dir, finished_run, data):
    from lmreason.commands import evaluate

    csv = write_sentiment_csv(tmp_path / "data.csv", 40)
    cfg = compose_command(
        "evaluate",
        [f"checkpoint={finished_run / 'checkpoints' / 'best'}", "split=ood", *(d.format(csv=csv) for d in data)],
        tmp_path / "out",
        cache_dir,
    )
    with pytest.raises(UserError) as exc:
        evaluate.run(cfg)
    assert "split=ood: the data" in one_line(exc) and "has no OOD split" in str(exc.value)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 5. NaN/inf: skip mode
def test_nonfinite_skip_skips_the_step_counts_it_and_finishes(tmp_path, cache_dir, monkeypatch):
    import torch

    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=24)
    monkeypatch.setenv("LMREASON_FAULT_AT", "loss:3:NAN")  # the 3rd micro-batch = step 3 (no accumulation)
    results = finetune_in_process(
        tmp_path / "out",
        cache_dir,
        "data=local",
        f"data.path={data}",
        "train.epochs=2",
        "train.nonfinite=skip",
        "train.early_stopping.enabled=false",
    )
    metrics = read_json(tmp_path / "out" / "metrics.json")
    assert metrics["status"] == "completed" and metrics["skipped_steps"] == results["skipped_steps"] == 1
    assert metrics["steps"] == 6  # 48 rows / 16 x 2 epochs: the skipped step still counts, the schedule is unchanged
    assert all(torch.isfinite(w).all() for w in weights(tmp_path / "out" / "checkpoints" / "last").values())


# --------------------------------------------------------------------------- 6. hostile files
@pytest.fixture
def run_copy(tmp_path, finished_run) -> Path:
    """A finished run dir of our own to tamper with (the session's stays clean), marked interrupted: a resume
    of a completed run loads nothing (it says it is complete), and these tests are about what a resume loads."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    record = read_json(copy / "metrics.json")
    (copy / "metrics.json").write_text(json.dumps({**record, "status": "interrupted"}))
    return copy


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dumps"])
def test_a_pickle_planted_as_trainer_state_is_refused_not_run(tmp_path, cache_dir, run_copy, writer):
    import torch

    marker = tmp_path / "pwned"
    state = run_copy / "checkpoints" / "last" / "trainer_state.pt"
    if writer == "torch.save":
        torch.save({"step": WritesAFile(marker)}, state)
    else:
        state.write_bytes(pickle.dumps({"step": WritesAFile(marker)}))
    with pytest.raises(UserError) as exc:
        finetune_in_process(tmp_path / "out", cache_dir, f"resume={run_copy}")
    assert "refused to load it: not a plain trainer state" in one_line(exc)
    assert not marker.exists()


def test_a_planted_pytorch_model_bin_is_never_loaded(tmp_path, cache_dir, run_copy):
    import torch

    from lmreason.commands import evaluate, infer

    marker = tmp_path / "pwned"
    for name in ("best", "last"):
        torch.save({"weight": WritesAFile(marker)}, run_copy / "checkpoints" / name / "pytorch_model.bin")
    # Next to the safetensors weights: those load, the pickle is ignored.
    evaluate.run(
        compose_command(
            "evaluate",
            [f"run={run_copy}", "split=validation", "compare_ood=false", "device=cpu"],
            tmp_path / "out",
            cache_dir,
        )
    )
    assert not marker.exists()
    # Instead of them: evaluate, infer and resume refuse the dir.
    for name in ("best", "last"):
        (run_copy / "checkpoints" / name / "model.safetensors").unlink()
    with pytest.raises(UserError) as exc:
        evaluate.run(compose_command("evaluate", [f"run={run_copy}", "device=cpu"], tmp_path / "out", cache_dir))
    assert "safetensors weights only" in one_line(exc)
    with pytest.raises(UserError) as exc:
        infer.run(
            compose_command("infer", [f"run={run_copy}", "text=great film", "device=cpu"], tmp_path / "out", cache_dir)
        )
    assert "safetensors weights only" in one_line(exc)
    with pytest.raises(UserError) as exc:
        finetune_in_process(tmp_path / "out", cache_dir, f"resume={run_copy}")
    assert "safetensors weights only" in one_line(exc)
    assert not marker.exists()


def test_a_saved_config_never_instantiates_targets(tmp_path, cache_dir, run_copy):
    from lmreason.commands import evaluate, infer

    marker = tmp_path / "pwned"
    target = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    for name in ("best", "last"):
        path = run_copy / "checkpoints" / name / "config.yaml"
        cfg = OmegaConf.load(path)
        with open_dict(cfg):
            cfg.model.loader = target
            cfg.data.reader = target
            cfg.task.head = target
        path.write_text(OmegaConf.to_yaml(cfg))
    evaluate.run(
        compose_command(
            "evaluate",
            [f"run={run_copy}", "split=validation", "compare_ood=false", "device=cpu"],
            tmp_path / "out",
            cache_dir,
        )
    )
    infer.run(
        compose_command("infer", [f"run={run_copy}", "text=a great film", "device=cpu"], tmp_path / "out", cache_dir)
    )
    assert not marker.exists()
    with pytest.raises(UserError) as exc:  # resume types the file on the schema: a stray key is refused
        finetune_in_process(tmp_path / "out", cache_dir, f"resume={run_copy}")
    assert "not a valid lmreason finetune config" in one_line(exc)
    assert not marker.exists()


def test_a_saved_config_with_python_yaml_tags_is_refused(tmp_path, cache_dir, run_copy):
    from lmreason.commands import evaluate

    marker = tmp_path / "pwned"
    for name in ("best", "last"):
        path = run_copy / "checkpoints" / name / "config.yaml"
        path.write_text(f"planted: !!python/object/apply:os.system ['touch {marker}']\n" + path.read_text())
    with pytest.raises(UserError) as exc:
        evaluate.run(compose_command("evaluate", [f"run={run_copy}", "device=cpu"], tmp_path / "out", cache_dir))
    assert "unreadable config" in one_line(exc)
    with pytest.raises(UserError) as exc:
        finetune_in_process(tmp_path / "out", cache_dir, f"resume={run_copy}")
    assert "unreadable config" in one_line(exc)
    assert not marker.exists()


def test_remote_code_in_a_run_dir_stays_off_unless_asked(tmp_path, cache_dir, run_copy):
    """A checkpoint whose config.json maps the model to its own module (code that would run on import), and a
    saved config that says trust_remote_code: true. evaluate, infer and resume must not run that code."""
    from lmreason.commands import evaluate, infer

    marker = tmp_path / "pwned"
    for name in ("best", "last"):
        checkpoint = run_copy / "checkpoints" / name
        (checkpoint / "planted_model.py").write_text(
            f"open({str(marker)!r}, 'w')\nfrom transformers import BertForSequenceClassification as PlantedModel\n"
        )
        config = json.loads((checkpoint / "config.json").read_text())
        config["auto_map"] = {
            "AutoConfig": "planted_model.PlantedModel",
            "AutoModelForSequenceClassification": "planted_model.PlantedModel",
        }
        (checkpoint / "config.json").write_text(json.dumps(config))
        saved = OmegaConf.load(checkpoint / "config.yaml")
        saved.model.trust_remote_code = True
        (checkpoint / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    evaluate.run(
        compose_command(
            "evaluate",
            [f"run={run_copy}", "split=validation", "compare_ood=false", "device=cpu"],
            tmp_path / "out",
            cache_dir,
        )
    )
    infer.run(
        compose_command("infer", [f"run={run_copy}", "text=a great film", "device=cpu"], tmp_path / "out", cache_dir)
    )
    finetune_in_process(tmp_path / "out", cache_dir, f"resume={run_copy}")  # loads the last checkpoint's model
    assert not marker.exists()


# --------------------------------------------------------------------------- 7. resource faults
@pytest.mark.parametrize("blocker", ["a file in the way", "a read-only dir"])
def test_an_output_dir_that_cannot_be_written_is_one_line(tmp_path, cache_dir, blocker):
    if blocker == "a file in the way":
        (tmp_path / "taken").write_text("a file, not a dir")
        run_dir = tmp_path / "taken" / "run"
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only dirs")
        (tmp_path / "ro").mkdir(mode=0o500)
        run_dir = tmp_path / "ro" / "run"
    proc = run_cli(
        "finetune",
        *TINY_TRAIN,
        "data=local",
        "data.path=x.csv",
        f"hydra.run.dir={run_dir}",
        cache_dir=cache_dir,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 1 and f"cannot write the output dir {run_dir}" in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_a_cache_dir_that_cannot_be_written_is_one_line(tmp_path):
    data = write_sentiment_csv(tmp_path / "data.csv", 40)
    (tmp_path / "taken").write_text("a file, not a dir")
    with pytest.raises(UserError, match="cannot write the prepared data") as exc:
        run_command(
            "prepare",
            "model=tiny-bert",
            "data=local",
            f"data.path={data}",
            output_dir=tmp_path / "out",
            cache_dir=tmp_path / "taken" / "c",
        )
    one_line(exc)


@pytest.mark.parametrize("failing", ["weights", "trainer state", "the copy to best"])
def test_a_full_disk_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, finished_run, monkeypatch, failing):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmreason.training import checkpoint as ckpt

    source = finished_run / "checkpoints" / "best"
    model = AutoModelForSequenceClassification.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    root = tmp_path / "checkpoints"
    ckpt.save_checkpoint(root / "last", model, tokenizer, {"step": 1}, {"step": 1}, "seed: 1\n")
    ckpt.link_checkpoint(root / "last", root / "best")
    before = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # the new checkpoint would differ
    with pytest.raises(UserError) as exc:
        if failing == "weights":
            monkeypatch.setattr(type(model), "save_pretrained", disk_full)
            ckpt.save_checkpoint(root / "last", model, tokenizer, {"step": 2}, {"step": 2}, "seed: 1\n")
        elif failing == "trainer state":
            monkeypatch.setattr(torch, "save", disk_full)
            ckpt.save_checkpoint(root / "last", model, tokenizer, {"step": 2}, {"step": 2}, "seed: 1\n")
        else:
            monkeypatch.setattr(ckpt, "_link_or_copy", disk_full)
            ckpt.link_checkpoint(root / "last", root / "best")
    assert "No space left on device" in one_line(exc) and "previous" in str(exc.value)
    assert {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in root.iterdir()) == ["best", "last"]  # no temp dir left behind
