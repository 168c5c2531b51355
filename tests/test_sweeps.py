"""Sweeps: Hydra launchers (joblib), the Optuna search, failed jobs in a multirun, and the sweep report."""

from __future__ import annotations

import csv
import json
import os
import socket
from pathlib import Path

import pytest
from conftest import read_json, run_cli, run_command, write_sentiment_csv
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lmreason.config import config_dir

TINY = [
    "model=tiny-bert",
    "scheduler.warmup_steps=0",
    "device=cpu",
    "device.precision=fp32",
    "device.threads=1",
    "data=local",
    "train.epochs=1",
    "train.batch_size=16",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_sentiment_csv(tmp_path_factory.mktemp("sweep-data") / "data.csv", 60, seed=31)


# ----------------------------------------------------------------------------- configs
def compose_finetune(*overrides: str):
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return compose(config_name="finetune", overrides=list(overrides), return_hydra_config=True)


def test_optuna_search_follows_the_early_stopping_mode():
    cfg = compose_finetune("hparams_search=optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"  # val/acc
    assert set(sweeper.params) == {
        "optimizer.lr",
        "regularization.weight_decay",
        "scheduler.warmup_steps",
        "regularization.hidden_dropout",
        "train.batch_size",
    }
    cfg = compose_finetune(
        "hparams_search=optuna", "train.early_stopping.monitor=val/loss", "train.early_stopping.mode=min"
    )
    assert cfg.hydra.sweeper.direction == "minimize"


@pytest.mark.parametrize("launcher,target", [("parallel", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launcher_configs_compose(launcher, target):
    if launcher == "slurm":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_finetune(f"hydra/launcher={launcher}")
    assert cfg.hydra.launcher._target_.endswith(target)
    OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def test_objective_is_none_without_a_finite_metric():
    from lmreason.commands.finetune import objective

    assert objective({"best_metric": 0.75}) == 0.75
    assert objective({"best_metric": None}) is None  # Optuna: FAIL, not a crash (hydra#2237) and never best
    assert objective({"best_metric": float("nan")}) is None


def test_a_failure_is_recorded_only_in_a_fresh_dir_or_over_its_own_running_record(tmp_path):
    from lmreason.commands.finetune import record_failure
    from lmreason.errors import UserError

    cfg = OmegaConf.create({"train": {"early_stopping": {"monitor": "val/acc"}}})
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    record_failure(fresh, cfg, UserError("data.path=x.csv: no such file"))
    assert read_json(fresh / "metrics.json") == {
        "monitor": "val/acc",
        "best_metric": None,
        "history": [],
        "status": "failed",
        "error": "data.path=x.csv: no such file",
    }
    own = tmp_path / "own"
    own.mkdir()
    (own / "metrics.json").write_text(
        json.dumps({"status": "running", "history": [{"step": 2}], "process": {"pid": os.getpid()}})
    )
    record_failure(own, cfg, KeyError("boom"))  # a bug mid-training: the partial history stays
    assert read_json(own / "metrics.json")["status"] == "failed"
    assert read_json(own / "metrics.json")["history"] == [{"step": 2}]
    assert read_json(own / "metrics.json")["error"] == "KeyError: 'boom'"
    for name, content in {
        "diverged": {"status": "diverged"},
        "other": {"status": "running", "process": {"pid": 1}},
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(content))
        record_failure(tmp_path / name, cfg, UserError("x"))
        assert read_json(tmp_path / name / "metrics.json") == content
    (tmp_path / "earlier" / "checkpoints").mkdir(parents=True)
    record_failure(tmp_path / "earlier", cfg, UserError("already holds a run"))
    assert not (tmp_path / "earlier" / "metrics.json").exists()


# ----------------------------------------------------------------------------- sweep report on a crafted sweep dir
def fake_run(root: Path, name: str, overrides: list[str], metrics=None, raw: str | None = None, test_acc=None) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))
    if raw is not None:
        (run / "metrics.json").write_text(raw)
    if test_acc is not None:
        (run / "eval" / "test").mkdir(parents=True)
        (run / "eval" / "test" / "metrics.json").write_text(json.dumps({"acc": test_acc, "loss": 0.3}))
    return run


def done(status: str, best, **extra) -> dict:
    return {
        "status": status,
        "monitor": "val/acc",
        "mode": "max",
        "best_metric": best,
        "best_step": 4,
        "steps": 8,
        "wall_time_s": 75.0,
        **extra,
    }


def test_sweep_report_copes_with_failed_running_and_broken_runs(tmp_path, cache_dir, capsys):
    sweep = tmp_path / "sweep"
    common = ["model=tiny-bert", "data=local"]
    fake_run(sweep, "0", [*common, "optimizer.lr=0.001"], done("completed", 0.75), test_acc=0.7)
    fake_run(sweep, "1", [*common, "optimizer.lr=0.003"], done("early_stopped", 0.875))
    fake_run(sweep, "2", [*common, "optimizer.lr=10"], done("diverged", 0.9))  # diverged after a good start: never best
    fake_run(sweep, "3", [*common, "optimizer.lr=0.01"], {"status": "failed", "error": "data.path=x.csv: no such file"})
    fake_run(sweep, "4", [*common, "optimizer.lr=0.02"])  # no metrics.json
    fake_run(sweep, "5", [*common, "optimizer.lr=0.03"], raw='{"status": "compl')  # cut short
    fake_run(
        sweep,
        "6",
        [*common, "optimizer.lr=0.04"],
        done("running", 0.5, process={"host": socket.gethostname(), "pid": os.getpid()}),
    )
    fake_run(
        sweep,
        "10",
        [*common, "optimizer.lr=0.05"],
        done("running", 0.5, process={"host": socket.gethostname(), "pid": 2**22 + 7}),
    )

    run_command("evaluate", f"sweep={sweep}", output_dir=tmp_path / "out", cache_dir=cache_dir)
    out = capsys.readouterr().out
    report = read_json(sweep / "sweep_report.json")
    statuses = {r["run"]: r["status"] for r in report["runs"]}
    assert statuses == {
        "0": "completed",
        "1": "early_stopped",
        "2": "diverged",
        "3": "failed",
        "4": "unknown",
        "5": "unreadable",
        "6": "running",
        "10": "killed",
    }
    assert [r["run"] for r in report["runs"]] == ["0", "1", "2", "3", "4", "5", "6", "10"]  # job order, not text order
    assert report["best_run"] == "1" and report["best_metric"] == 0.875
    assert report["varying_overrides"] == ["optimizer.lr"]
    assert report["fixed_overrides"] == {"model": "tiny-bert", "data": "local"}
    assert report["runs"][0]["eval"] == {"test/acc": 0.7}
    assert "no such file" in report["runs"][3]["note"]
    assert "best: run 1" in out and "★ 1" in out

    rows = list(csv.DictReader(open(sweep / "sweep_report.csv")))
    assert [row["run"] for row in rows] == ["0", "1", "2", "3", "4", "5", "6", "10"]
    assert rows[1]["is_best"] == "True" and rows[1]["optimizer.lr"] == "0.003" and rows[0]["test/acc"] == "0.7"


def test_sweep_report_errors_are_one_line(tmp_path, cache_dir):
    from lmreason.errors import UserError

    with pytest.raises(UserError, match="no such directory") as exc:
        run_command("evaluate", f"sweep={tmp_path / 'nope'}", output_dir=tmp_path / "out", cache_dir=cache_dir)
    assert "\n" not in str(exc.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no run dirs") as exc:
        run_command("evaluate", f"sweep={tmp_path / 'empty'}", output_dir=tmp_path / "out", cache_dir=cache_dir)
    assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- real sweeps
@pytest.mark.slow
def test_a_failed_job_is_recorded_and_the_multirun_goes_on(tmp_path, cache_dir, data):
    sweep = tmp_path / "sweep"
    # job 0 has an impossible dropout (bad input: fails in setup), job 1 is fine and still runs
    proc = run_cli(
        "finetune",
        "-m",
        *TINY,
        f"data.path={data}",
        "regularization.hidden_dropout=1.5,0.1",
        f"hydra.sweep.dir={sweep}",
        cache_dir=cache_dir,
        cwd=tmp_path,
    )
    assert "a dropout probability must be in [0, 1)" in proc.stderr and "Traceback" not in proc.stderr
    failed = read_json(sweep / "0" / "metrics.json")
    assert failed["status"] == "failed" and "dropout" in failed["error"]
    assert read_json(sweep / "1" / "metrics.json")["status"] == "completed"


@pytest.mark.slow
def test_joblib_multirun_of_two_jobs_gives_two_run_dirs(tmp_path, cache_dir, data):
    sweep = tmp_path / "sweep"
    proc = run_cli(
        "finetune",
        "-m",
        "hydra/launcher=parallel",
        *TINY,
        f"data.path={data}",
        "optimizer.lr=1e-3,3e-3",
        f"hydra.sweep.dir={sweep}",
        cache_dir=cache_dir,
        cwd=tmp_path,
    )
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    for job in ("0", "1"):
        assert read_json(sweep / job / "metrics.json")["status"] == "completed"
        assert (sweep / job / "checkpoints" / "best" / "model.safetensors").is_file()
        assert (sweep / job / ".hydra" / "config.yaml").is_file()


@pytest.mark.slow
def test_optuna_search_of_three_trials_and_its_report(tmp_path, cache_dir, data, capsys):
    sweep = tmp_path / "sweep"
    # The shipped search space, with lr narrowed to a good value and a diverging one (1e30: NaN at step 2);
    # monitor val/loss (min) so trials differ. Sampler seed 6 draws lr 0.003, 1e30, 0.003 (optuna 2.10).
    proc = run_cli(
        "finetune",
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=6",
        "optimizer.lr=choice(0.003,1e30)",
        "train.early_stopping.monitor=val/loss",
        "train.early_stopping.mode=min",
        *TINY,
        f"data.path={data}",
        f"hydra.sweep.dir={sweep}",
        cache_dir=cache_dir,
        cwd=tmp_path,
    )
    assert "NaN/inf" in proc.stderr  # the diverged trial said so in one line, and the sweep went on
    optuna = OmegaConf.load(sweep / "optimization_results.yaml")

    capsys.readouterr()
    run_command("evaluate", f"sweep={sweep}", output_dir=tmp_path / "out", cache_dir=cache_dir)
    report_out = capsys.readouterr().out
    report = read_json(sweep / "sweep_report.json")
    runs = {r["run"]: r for r in report["runs"]}
    assert len(runs) == 3 and report["mode"] == "min"
    diverged = [r for r in runs.values() if r["overrides"]["optimizer.lr"] == "1e+30"]
    finished = [r for r in runs.values() if r["overrides"]["optimizer.lr"] == "0.003"]
    assert diverged and finished  # seed 6 draws both
    assert all(r["status"] == "diverged" and not r["is_best"] for r in diverged)
    assert all(r["status"] == "completed" for r in finished)
    best = min(finished, key=lambda r: r["best_metric"])
    assert report["best_run"] == best["run"] and best["is_best"]
    assert optuna.best_value == pytest.approx(best["best_metric"])
    assert optuna.best_params["optimizer.lr"] == 0.003
    assert f"best: run {best['run']}" in report_out
    assert (sweep / "sweep_report.csv").is_file()
