"""The command line as a user types it: help, dispatch, Hydra flags, config errors."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO, run_cli, write_sentiment_csv


def lmreason(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "lmreason", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_every_command_without_importing_torch():
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from lmreason.cli import main; main(['--help']); "
                               "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'heavy import'"],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for command in ("prepare", "finetune", "evaluate", "infer"):
        assert f"  {command}" in proc.stdout
    assert lmreason().stdout == lmreason("--help").stdout


def test_unknown_command_is_a_one_line_usage_error():
    proc = lmreason("train")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown command 'train'" in proc.stderr and "usage: lmreason" in proc.stderr


def test_command_help_shows_its_config_groups():
    out = lmreason("prepare", "--help").stdout.split("== Config ==")[0]
    groups = {line.split(":")[0]: line.split(":", 1)[1] for line in out.splitlines() if line.count(":") == 1}
    assert {"bert", "tiny-bert"} <= {o.strip() for o in groups["model"].split(",")}
    assert {"local", "reasoning", "bigbench", "hub", "sst2"} <= {o.strip() for o in groups["data"].split(",")}
    assert "cls" in groups["task"]


def test_cfg_job_prints_the_composed_config_with_overrides():
    proc = lmreason("finetune", "--cfg", "job", "optimizer=sgd", "optimizer.lr=0.1", "regularization=[l2,freeze]")
    assert proc.returncode == 0, proc.stderr
    assert "name: sgd" in proc.stdout and "lr: 0.1" in proc.stdout
    assert "weight_decay: 0.01" in proc.stdout and "freeze_embeddings: true" in proc.stdout


def test_misspelt_key_fails_at_compose_time_naming_it():
    proc = lmreason("finetune", "--cfg", "job", "optimizer.lrr=0.1")
    assert proc.returncode != 0
    assert "lrr" in proc.stderr and "OptimizerConfig" in proc.stderr


def test_wrong_type_fails_at_compose_time_naming_the_key():
    proc = lmreason("finetune", "--cfg", "job", "train.batch_size=big")
    assert proc.returncode != 0
    assert "train.batch_size" in proc.stderr


def test_data_source_keys_are_validated_per_source():
    proc = lmreason("prepare", "--cfg", "job", "data=local", "data.task=chain_sum")
    assert proc.returncode != 0 and "LocalDataConfig" in proc.stderr


def test_multirun_flag_runs_one_job_per_value(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 60)
    sweep = tmp_path / "sweep"
    run_cli("prepare", "-m", "model=tiny-bert", "data=local", f"data.path={data}", "model.max_length=16,32",
            f"hydra.sweep.dir={sweep}", cache_dir=cache_dir, cwd=tmp_path)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    assert all((sweep / job / ".hydra" / "config.yaml").is_file() for job in jobs)
