"""Run safety (issue 17, items 3-6): `best` is the best, resume from anywhere without overwriting a finished
run's record, no litter from failed attempts, threads chosen for the machine as it is."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from conftest import TINY_TRAIN, read_json, run_cli, write_sentiment_csv
from omegaconf import OmegaConf

from lmreason.errors import UserError


def finetune_in_process(tmp_path: Path, cache_dir: Path, *overrides: str) -> dict:
    """`finetune.run` on the config the CLI composes (no Hydra run dir: output_dir is tmp_path/out)."""
    from hydra import compose, initialize_config_dir

    from lmreason.commands import finetune
    from lmreason.config import config_dir

    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose(
            config_name="finetune",
            overrides=[*TINY_TRAIN, *overrides, f"output_dir={tmp_path / 'out'}", f"cache_dir={cache_dir}"],
        )
    return finetune.run(cfg)


def early_stopping(monitor="val/acc", mode="max", patience=2):
    from lmreason.training.early_stopping import EarlyStopping

    return EarlyStopping(
        OmegaConf.create({"enabled": True, "monitor": monitor, "mode": mode, "patience": patience, "min_delta": 0.0})
    )


# --------------------------------------------------------------------------- 3. best is the best
def test_a_tie_on_the_monitor_goes_to_the_lower_val_loss(tmp_path, cache_dir, split_dir):
    es = early_stopping(patience=2)
    assert es.update(1.0, 8, loss=0.60)
    assert es.update(1.0, 16, loss=0.40) and es.best_step == 16  # the tie: the better-trained model
    assert not es.update(1.0, 24, loss=0.50) and es.best_step == 16  # a higher loss does not move it
    assert es.should_stop  # a tie-break is no progress on the monitor: a plateau still stops
    assert es.update(0.9, 32, loss=0.1) is False and es.best == 1.0
    # monitor = val/loss: the plain rule (a tie keeps the earlier best)
    by_loss = early_stopping(monitor="val/loss", mode="min")
    assert by_loss.update(0.5, 8, loss=0.5) and not by_loss.update(0.5, 16, loss=0.5) and by_loss.best_step == 8
    # a trainer state saved before the rule has no best_loss: it loads, and ties keep the earlier best
    old = early_stopping()
    old.load_state_dict({"best": 1.0, "best_step": 8, "bad_evals": 0})
    assert old.best_loss is None and not old.update(1.0, 16, loss=0.1) and old.best_step == 8

    # A small run reaches val/acc 1.0 at several validations: best is the lowest-loss one, and checkpoints/best
    # holds it.
    results = finetune_in_process(
        tmp_path,
        cache_dir,
        "data=local",
        f"data.path={split_dir}",
        "train.epochs=4",
        "train.eval_every_steps=4",
        "train.eval_every_epoch=false",
        "train.early_stopping.patience=20",
    )
    history = results["history"]
    top = [h for h in history if h["val/acc"] == results["best_metric"]]
    assert len(top) >= 2, history  # the case this is about: a tie
    assert results["best_step"] == min(top, key=lambda h: h["val/loss"])["step"] != top[0]["step"]
    best = read_json(tmp_path / "out" / "checkpoints" / "best" / "lmreason.json")
    assert best["step"] == results["best_step"]


# --------------------------------------------------------------------------- 4. resume from anywhere
def test_resume_from_another_directory_continues_in_the_run_and_leaves_a_finished_run_alone(tmp_path, cache_dir):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    write_sentiment_csv(work / "data.csv", 96, seed=31)
    elsewhere.mkdir()
    args = [*TINY_TRAIN, "data=local", "data.path=data.csv", "train.epochs=2", "hydra.run.dir=runs/first"]
    stopped = run_cli(
        "finetune",
        *args,
        cache_dir=cache_dir,
        cwd=work,
        check=False,
        env_extra={"LMREASON_FAULT_AT": "train_step:2:STOP"},
    )
    run_dir = (work / "runs" / "first").resolve()
    assert stopped.returncode == 1 and f"resume={run_dir}" in stopped.stderr, stopped.stderr
    saved = OmegaConf.load(run_dir / "checkpoints" / "last" / "config.yaml")
    assert saved.data.path == str(work / "data.csv") and Path(saved.cache_dir).is_absolute()  # stored absolute
    hydra_config = (run_dir / ".hydra" / "config.yaml").read_bytes()

    run_cli("finetune", f"resume={run_dir}", cache_dir=cache_dir, cwd=elsewhere)  # relative data.path: found anyway
    assert not (elsewhere / "outputs").exists()  # no second run dir: the log went into the run
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == hydra_config
    record = read_json(run_dir / "metrics.json")
    assert record["status"] == "completed" and record["steps"] == 10
    log = (run_dir / "finetune.log").read_text()
    assert log.count("model: ") == 2 and "resuming at 2" in log  # both parts, appended
    assert "status: interrupted at step 2" in log and "status: completed at step 10; best val/acc = " in log
    assert "status: failed" not in log  # the interruption is the trainer's own status
    assert "validation at step 5: val/loss=" in log and "validation at step 10: " in log

    from lmreason.cli import resume_overrides  # how the CLI points Hydra at the run: only a run dir, only if not given

    assert resume_overrides([f"resume={run_dir}"]) == [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]
    assert resume_overrides([f"resume={elsewhere}"]) == []  # not a run: resume fails in a fresh dir, then removed
    assert resume_overrides([f"resume={run_dir}", "hydra.run.dir=x"]) == []

    before = (run_dir / "metrics.json").read_bytes()
    files = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.name != "finetune.log")
    again = run_cli("finetune", f"resume={run_dir}", cache_dir=cache_dir, cwd=elsewhere)
    assert "is already complete (completed at step 10); nothing to resume" in again.stdout
    assert (run_dir / "metrics.json").read_bytes() == before  # the record a sweep report reads is untouched
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*") if p.name != "finetune.log") == files


# --------------------------------------------------------------------------- 5. no litter
def test_a_failure_before_training_leaves_no_run_dir_and_a_later_one_keeps_its_record(tmp_path, cache_dir, monkeypatch):
    # The real CLI in Hydra's default run dir: a data mistake leaves no outputs/finetune/<date>/<time>/ stub.
    bad = tmp_path / "bad.csv"
    bad.write_text("text,stars\nfine,1\n")
    proc = run_cli(
        "finetune", *TINY_TRAIN, "data=local", f"data.path={bad}", cache_dir=cache_dir, cwd=tmp_path, check=False
    )
    assert proc.returncode == 1 and "label" in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not list((tmp_path / "outputs" / "finetune").glob("*/*")), list((tmp_path / "outputs").rglob("*"))

    # A dir holding an earlier run's record is never removed, nor its record overwritten.
    earlier = tmp_path / "out"
    earlier.mkdir()
    (earlier / "metrics.json").write_text('{"status": "completed"}')
    with pytest.raises(UserError):
        finetune_in_process(tmp_path, cache_dir, "data=local", f"data.path={bad}")
    assert (earlier / "metrics.json").read_text() == '{"status": "completed"}'
    (earlier / "metrics.json").unlink()
    earlier.rmdir()

    # A failure once training has begun keeps the dir: metrics.json says failed, with the one-line reason.
    from lmreason.training.trainer import FinetuneRecipe

    def broken_validation(self):
        raise UserError("validation broke")

    monkeypatch.setattr(FinetuneRecipe, "validate", broken_validation)
    data = write_sentiment_csv(tmp_path / "data.csv", 60, seed=32)
    with pytest.raises(UserError):
        finetune_in_process(tmp_path, cache_dir, "data=local", f"data.path={data}", "train.eval_every_steps=1")
    record = read_json(tmp_path / "out" / "metrics.json")
    assert record["status"] == "failed" and record["error"] == "validation broke"


# --------------------------------------------------------------------------- 6. threads follow the machine
def test_threads_default_to_the_idle_cores_and_a_busy_machine_is_warned_about(monkeypatch, caplog):
    import torch

    from lmreason.training import device

    assert [device.default_threads(2, load) for load in (0.0, 0.4, 0.9, 1.0, 1.6, 3.5)] == [2, 2, 1, 1, 1, 1]
    assert device.default_threads(16, 4.2) == 12 and device.default_threads(4, None) == 4
    before, measure_load = torch.get_num_threads(), device.machine_load
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "usable_cores", lambda: 2)
    try:
        monkeypatch.setattr(device, "machine_load", lambda: 0.1)
        with caplog.at_level(logging.WARNING, logger=device.__name__):
            idle = device.choose_threads(None)
        assert torch.get_num_threads() == idle.threads == 2 and not caplog.records
        assert idle.describe() == "2 threads (of 2 cores; load 0.1; idle cores)"

        monkeypatch.setattr(device, "machine_load", lambda: 1.1)  # one other job on 2 cores
        assert device.choose_threads(None).threads == torch.get_num_threads() == 1 and not caplog.records
        with caplog.at_level(logging.WARNING, logger=device.__name__):
            forced = device.choose_threads(2)  # device.threads=2 is kept, and warned about
        assert forced.threads == torch.get_num_threads() == 2 and forced.describe().endswith("device.threads)")
        assert len(caplog.records) == 1 and "the machine is busy (load 1.1 on 2 cores)" in caplog.text

        from lmreason.ui import _threads

        assert _threads() == "2 threads (of 2 cores; load 1.1; device.threads)"  # the banner's device row
    finally:
        torch.set_num_threads(before)
    # The reading is of now (two /proc/stat samples), not the 1-minute average that still counts a job
    # finished seconds ago: half of 2 cores' time busy between the samples = 1 core busy.
    import io

    readings = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  150 0 150 900 0 0 0 0 0 0\n"])
    monkeypatch.setattr(device, "open", lambda path: io.StringIO(next(readings)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert measure_load(sample_s=0) == 1.0
    # The CLI asks OpenMP to sleep, not spin, when idle (before torch starts it), unless the user chose a policy.
    from lmreason.cli import passive_openmp_wait

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    passive_openmp_wait()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    passive_openmp_wait()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_infer_keeps_no_run_dir(tmp_path, cache_dir, finished_run):
    """Every `infer` used to leave outputs/infer/<date>/<time>/ (.hydra + an infer.log) behind: litter."""
    proc = run_cli("infer", f"run={finished_run}", "text=a great film", cache_dir=cache_dir, cwd=tmp_path)
    assert "1 predictions in" in proc.stdout
    assert list(tmp_path.iterdir()) == []  # nothing but what output= would name
