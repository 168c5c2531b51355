"""The command line as a user types it: help, dispatch, Hydra flags, config errors.

Help, `--cfg job` and `-m` are Hydra's own handling of argv: subprocesses. Dispatch and compose-time
errors run in-process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO, compose_command, run_cli, write_sentiment_csv


def lmreason(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "lmreason", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_help_lists_every_command_without_importing_torch():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from lmreason.cli import main; main(['--help']); "
            "assert 'torch' not in sys.modules and 'hydra' not in sys.modules, 'heavy import'",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("prepare", "finetune", "evaluate", "infer"):
        assert f"  {command}" in proc.stdout
    assert lmreason().stdout == lmreason("--help").stdout


def test_unknown_command_is_a_one_line_usage_error(capsys):
    from lmreason.cli import main

    assert main(["train"]) == 2  # `python -m lmreason` exits with main's status
    stderr = capsys.readouterr().err
    assert stderr.strip().count("\n") == 0
    assert "unknown command 'train'" in stderr and "usage: lmreason" in stderr


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


def compose_error(command: str, *overrides: str, tmp_path) -> str:
    """The message (with its cause, as Hydra prints them) of a composition that must fail."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as exc:
        compose_command(command, list(overrides), tmp_path / "out", tmp_path / "cache")
    return f"{exc.value}\n{exc.value.__cause__}"


def test_wrong_type_fails_at_compose_time_naming_the_key(tmp_path):
    assert "train.batch_size" in compose_error("finetune", "train.batch_size=big", tmp_path=tmp_path)


def test_data_source_keys_are_validated_per_source(tmp_path):
    assert "LocalDataConfig" in compose_error("prepare", "data=local", "data.task=chain_sum", tmp_path=tmp_path)


def test_multirun_flag_runs_one_job_per_value(tmp_path, cache_dir):
    data = write_sentiment_csv(tmp_path / "data.csv", 60)
    sweep = tmp_path / "sweep"
    run_cli(
        "prepare",
        "-m",
        "model=tiny-bert",
        "data=local",
        f"data.path={data}",
        "model.max_length=16,32",
        f"hydra.sweep.dir={sweep}",
        cache_dir=cache_dir,
        cwd=tmp_path,
    )
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    assert all((sweep / job / ".hydra" / "config.yaml").is_file() for job in jobs)
