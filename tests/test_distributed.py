"""DDP through torchrun: 2 CPU processes (gloo) train exactly like one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, read_json, run_command, write_sentiment_csv

from lmreason.errors import UserError

pytestmark = pytest.mark.slow

# 47 training examples: the last global batch of 10 splits 4/3 between the ranks (the loss weighting
# must make that exact); eval_batch_size=2 shards the 6 validation examples unevenly (2 batches / 1).
# No dropout: its random masks come from per-rank RNG streams, so it cannot match one process.
COMMON = [
    "model=tiny-bert",
    "optimizer.lr=3e-3",
    "scheduler.warmup_steps=0",
    "device=cpu",
    "device.precision=fp32",
    "device.threads=1",
    "data=local",
    "+data.max_rows.train=47",
    "train.epochs=2",
    "train.eval_batch_size=2",
    "train.log_every_steps=1",
    "regularization.hidden_dropout=0",
    "regularization.attention_dropout=0",
]
GLOBAL_BATCH = 10


def torchrun(*args: str, cache_dir: Path, cwd: Path, check: bool = True, env_extra: dict | None = None):
    """`torchrun --nproc_per_node 2 -m lmreason <args>`, as a user would type it."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lmreason",
        *args,
    ]
    env = {**cli_env(cache_dir), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"torchrun {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_sentiment_csv(tmp_path_factory.mktemp("ddp-data") / "data.csv", 60, seed=21)


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory, cache_dir, data) -> Path:
    """The reference: one process, batches of GLOBAL_BATCH."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    run_command(
        "finetune",
        *COMMON,
        f"data.path={data}",
        f"train.batch_size={GLOBAL_BATCH}",
        output_dir=run_dir,
        cache_dir=cache_dir,
    )
    return run_dir


def assert_same_training(run_dir: Path, reference: Path) -> None:
    ours, theirs = read_json(run_dir / "metrics.json"), read_json(reference / "metrics.json")
    assert ours["status"] == theirs["status"] == "completed"
    assert ours["steps"] == theirs["steps"] == 10  # ceil(47 / 10) = 5 steps per epoch, 2 epochs
    assert [h["step"] for h in ours["history"]] == [h["step"] for h in theirs["history"]]
    for a, b in zip(ours["history"], theirs["history"]):
        assert a["val/loss"] == pytest.approx(b["val/loss"], abs=1e-5)
        assert a["val/acc"] == b["val/acc"]
    from safetensors.torch import load_file

    weights = load_file(run_dir / "checkpoints" / "last" / "model.safetensors")
    expected = load_file(reference / "checkpoints" / "last" / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name, tensor in weights.items():
        assert (tensor - expected[name]).abs().max().item() < 1e-4, name


def test_two_process_ddp_matches_one_process(tmp_path, cache_dir, data, single_process_run):
    proc = torchrun(
        "finetune",
        *COMMON,
        f"data.path={data}",
        f"train.batch_size={GLOBAL_BATCH // 2}",
        cache_dir=cache_dir,
        cwd=tmp_path,
    )
    # Both ranks agree on rank 0's run dir (each composed its own `${now:...}` dir) and only rank 0 writes.
    run_dirs = [p for p in (tmp_path / "outputs" / "finetune").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    assert read_json(run_dir / "metrics.json")["world_size"] == 2
    writers = {path.name.rsplit(".", 2)[1] for path in (run_dir / "tb").glob("events.*")}  # events.<...>.<pid>.<n>
    assert len(writers) == 1  # TensorBoard from one process
    assert "10 = 5 per step x 1 accumulation x 2 process(es)" in proc.stdout
    assert proc.stdout.count("done (completed)") == 1  # rank 0 reports, rank 1 is quiet
    assert_same_training(run_dir, single_process_run)


def test_ddp_resume_continues_the_same_curve(tmp_path, cache_dir, data, single_process_run):
    run_dir = tmp_path / "run"
    args = ["finetune", *COMMON, f"data.path={data}", f"train.batch_size={GLOBAL_BATCH // 2}"]
    # A STOP fault point acts as a SIGTERM during step 3 (mid-epoch 1), on every rank.
    proc = torchrun(
        *args,
        f"hydra.run.dir={run_dir}",
        cache_dir=cache_dir,
        cwd=tmp_path,
        check=False,
        env_extra={"LMREASON_FAULT_AT": "train_step:3:STOP"},
    )
    assert proc.returncode != 0 and f"resume={run_dir}" in proc.stderr
    assert read_json(run_dir / "metrics.json")["status"] == "interrupted"

    # A resume with another number of processes would change the global batch: refused, nothing touched.
    with pytest.raises(UserError, match=r"was trained with 2 process\(es\)") as exc:
        run_command("finetune", f"resume={run_dir}", output_dir=tmp_path / "unused", cache_dir=cache_dir)
    assert "\n" not in str(exc.value)
    assert read_json(run_dir / "metrics.json")["status"] == "interrupted"

    torchrun("finetune", f"resume={run_dir}", cache_dir=cache_dir, cwd=tmp_path)
    assert_same_training(run_dir, single_process_run)
