"""Shared fixtures: the CLI as a user types it (a subprocess), small data files, one tiny finished run."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def cli_env(cache_dir: Path) -> dict:
    env = dict(os.environ)
    env.update({"LMREASON_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"})
    return env


def run_cli(*args: str, cache_dir: Path, cwd: Path, check: bool = True, timeout: int = 600,
            env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """`lmreason <args>` in a subprocess, as a user would type it."""
    env = {**cli_env(cache_dir), **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "lmreason", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmreason {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


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
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lmreason-cache")


@pytest.fixture(scope="session")
def split_dir(tmp_path_factory) -> Path:
    return write_split_dir(tmp_path_factory.mktemp("data") / "sentiment")


TINY_TRAIN = ["model=tiny-bert", "optimizer.lr=3e-3", "scheduler.warmup_steps=0", "device=cpu", "device.precision=fp32",
              "train.batch_size=16", "train.log_every_steps=2"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, cache_dir, split_dir) -> Path:
    """A tiny finetune run on the split dir (with an OOD split and a `topic` metadata column)."""
    work = tmp_path_factory.mktemp("run")
    run_dir = work / "run"
    run_cli("finetune", *TINY_TRAIN, "data=local", f"data.path={split_dir}", "data.metadata_columns=[topic]",
            "train.epochs=4", f"hydra.run.dir={run_dir}", cache_dir=cache_dir, cwd=work)
    return run_dir


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def tiny_bert_classifier(**config):
    """A seeded random BERT sequence classifier (a few thousand weights); `config` overrides its BertConfig."""
    import torch
    import transformers

    values = {"vocab_size": 60, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 32, "max_position_embeddings": 32, "num_labels": 2, "pad_token_id": 0,
              "attn_implementation": "sdpa"}
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(**{**values, **config}))
