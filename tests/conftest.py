"""Shared fixtures and helpers.

Tests compose each command's real config and call its `run(cfg)` in this process
(lightning-hydra-template's style): `compose_command`, `run_command`, `finetune_in_process`.
Bad input is then a `pytest.raises(UserError, match=...)`. A few tests still start the CLI as a
user types it (`run_cli`, a subprocess): one per command for the exit-code / one-line-error /
no-traceback contract, the Hydra callbacks (run dir guard), multiruns (`-m`) and kills.

Trained runs that tests only read are session fixtures (`finished_run`, `dropout_run`): one tiny
training each for the whole session.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# What the CLI subprocesses always ran with: offline (nothing may reach the hub) and no tokenizers
# fork warnings. Set when pytest loads this file, before any test module imports huggingface_hub or
# datasets (both read the offline flags once, at import).
IN_PROCESS_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
os.environ.update(IN_PROCESS_ENV)


# --------------------------------------------------------------------------- the CLI in a subprocess
def cli_env(cache_dir: Path) -> dict:
    env = dict(os.environ)
    env.update({"LMREASON_CACHE_DIR": str(cache_dir), **IN_PROCESS_ENV, "PYTHONHASHSEED": "0"})
    return env


def run_cli(
    *args: str, cache_dir: Path, cwd: Path, check: bool = True, timeout: int = 600, env_extra: dict | None = None
) -> subprocess.CompletedProcess:
    """`lmreason <args>` in a subprocess, as a user would type it."""
    env = {**cli_env(cache_dir), **(env_extra or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "lmreason", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"lmreason {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, expected: str) -> None:
    """The CLI's contract for bad input: exit status 1, one line on stderr naming the problem, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-3000:])
    assert expected in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- commands in-process
def compose_command(command: str, overrides: list[str], output_dir: Path, cache_dir: Path):
    """A command's config as the CLI composes it. Compose makes no Hydra run dir, so the run's directory
    (`output_dir`, `${hydra:runtime.output_dir}` in conf/paths.yaml) and the cache are given."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lmreason.config import config_dir

    GlobalHydra.instance().clear()  # a compose left initialized (by a failed test) must not leak into this one
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return compose(
            config_name=command, overrides=[*overrides, f"output_dir={output_dir}", f"cache_dir={cache_dir}"]
        )


def run_command(command: str, *overrides: str, output_dir: Path, cache_dir: Path):
    """`lmreason <command> <overrides>` in this process: compose the real config, call the command's `run(cfg)`.

    Returns what `run` returns; a UserError propagates (the CLI would print it as one line, exit 1).
    The process-wide state a run changes (finetune's SIGINT/SIGTERM handlers, `device.threads`) is put back;
    the fault points count from zero, as in a new process.
    """
    import torch

    from lmreason import faults

    module = importlib.import_module(f"lmreason.commands.{command}")
    cfg = compose_command(command, list(overrides), output_dir, cache_dir)
    # LMREASON_FAULT_AT counts "the n-th time this process reaches a point": each CLI run was a new process.
    faults.reset_counts()
    handlers, threads = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)), torch.get_num_threads()
    try:
        return module.run(cfg)
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
        torch.set_num_threads(threads)


TINY_TRAIN = [
    "model=tiny-bert",
    "optimizer.lr=3e-3",
    "scheduler.warmup_steps=0",
    "device=cpu",
    "device.precision=fp32",
    "train.batch_size=16",
    "train.log_every_steps=2",
]


def acfg(**overrides):
    """The attribution diagnostics settings (`diagnostics.attribution`) with `overrides` set."""
    from omegaconf import OmegaConf

    from lmreason.config import AttributionDiagnosticsConfig

    cfg = OmegaConf.structured(AttributionDiagnosticsConfig)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


# A tiny Llama-shaped decoder (config_overrides of a hand-built model dir or of model=tiny-gpt)
TINY_SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
}
# task=gen on tiny-gpt and a few chain-sum problems (tests add their own train.* keys)
TINY_GEN_TRAIN = [
    "model=tiny-gpt",
    "task=gen",
    "data=chain_sum",
    "data.sizes={train: 32, validation: 8, test: 8, ood: 8}",
    "device=cpu",
    "device.precision=fp32",
    "optimizer.lr=3e-3",
    "scheduler.warmup_steps=0",
    "train.batch_size=8",
    "generation.max_new_tokens=4",
]


def finetune_in_process(output_dir: Path, cache_dir: Path, *overrides: str):
    """`lmreason finetune` on tiny-bert (TINY_TRAIN, then `overrides`) in this process, writing into `output_dir`."""
    return run_command("finetune", *TINY_TRAIN, *overrides, output_dir=output_dir, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lmreason-cache")


@pytest.fixture(scope="session", autouse=True)
def in_process_env(cache_dir):
    """The environment `hydra_command`'s `main` and the CLI subprocesses set, for in-process runs."""
    from lmreason.commands.entry import quiet_libraries

    patch = pytest.MonkeyPatch()
    patch.setenv("LMREASON_CACHE_DIR", str(cache_dir))  # where a packaged model is converted when no cache_dir is given
    quiet_libraries()
    yield
    patch.undo()


# --------------------------------------------------------------------------- data files
def write_sentiment_csv(path: Path, n: int = 240, seed: int = 0) -> Path:
    """A learnable two-class set: the adjective decides the label; `topic` is metadata to slice by."""
    rng = random.Random(seed)
    positive = ["great", "wonderful", "fantastic", "lovely", "superb", "excellent"]
    negative = ["awful", "terrible", "boring", "horrible", "bad", "dull"]
    lines = ["text,label,topic"]
    for i in range(n):
        label = i % 2
        word = rng.choice(positive if label else negative)
        lines.append(f"the film was really {word} and {rng.choice(['long', 'short'])},{label},{['a', 'b', 'c'][i % 3]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_split_dir(root: Path) -> Path:
    """train/validation/test/ood CSVs: ood uses longer sentences with unseen filler words."""
    root.mkdir(parents=True, exist_ok=True)
    write_sentiment_csv(root / "train.csv", 192, seed=1)
    write_sentiment_csv(root / "validation.csv", 48, seed=2)
    write_sentiment_csv(root / "test.csv", 48, seed=3)
    ood = write_sentiment_csv(root / "ood.csv", 48, seed=4)
    # No commas in the filler: unquoted, they made rows of 5 fields under a 3-column header (pandas silently
    # took the extra leading fields as an index, dropping the filler; lmreason's reader now refuses such rows).
    ood.write_text(ood.read_text().replace("the film was really", "honestly after a long week the film was fairly"))
    return root


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory) -> Path:
    return write_split_dir(tmp_path_factory.mktemp("data") / "sentiment")


# --------------------------------------------------------------------------- shared trained runs (read only)
@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cache_dir, split_dir) -> Path:
    """A tiny finetune run on the split dir (with an OOD split and a `topic` metadata column)."""
    run_dir = tmp_path_factory.mktemp("run") / "run"
    finetune_in_process(
        run_dir, cache_dir, "data=local", f"data.path={split_dir}", "data.metadata_columns=[topic]", "train.epochs=4"
    )
    return run_dir


# threads pinned: runs compared with each other (same seed, resume) must train at one thread count, since with
# more than one batch shards draw other dropout masks; the default count follows the machine's load at start
DROPOUT_RUN = [
    "data=local",
    "train.epochs=3",
    "train.early_stopping.enabled=false",
    "regularization=dropout",
    "device.threads=2",
]


@pytest.fixture(scope="session")
def dropout_data(tmp_path_factory) -> Path:
    return write_sentiment_csv(tmp_path_factory.mktemp("dropout-data") / "data.csv", 160, seed=12)


@pytest.fixture(scope="session")
def dropout_run(tmp_path_factory, cache_dir, dropout_data) -> Path:
    """An uninterrupted run with dropout on (random masks: what seeding and resume must reproduce):
    128 train rows / 16 = 8 steps per epoch, 3 epochs, no early stopping. Tests compare their own runs to it."""
    run_dir = tmp_path_factory.mktemp("dropout-run") / "run"
    finetune_in_process(run_dir, cache_dir, *DROPOUT_RUN, f"data.path={dropout_data}")
    return run_dir


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def tensorboard_scalar_tags(run_dir: Path) -> set[str]:
    """Every scalar tag in a run's TensorBoard events (<run>/tb)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags: set[str] = set()
    for event_file in (Path(run_dir) / "tb").glob("events.out.tfevents.*"):
        events = EventAccumulator(str(event_file))
        events.Reload()
        tags |= set(events.Tags()["scalars"])
    return tags


def tiny_bert_classifier(**config):
    """A seeded random BERT sequence classifier (a few thousand weights); `config` overrides its BertConfig."""
    import torch
    import transformers

    values = {
        "vocab_size": 60,
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
        "num_labels": 2,
        "pad_token_id": 0,
        "attn_implementation": "sdpa",
    }
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**{**values, **config}))
