"""Load a data source into raw split frames, with a fingerprint of its content.

A source is a local file or directory, a reasoning-gym generator, a BIG-bench
task.json or a hub dataset. Each loader returns `RawSource`: split name ->
DataFrame (the source's own columns) and a content hash, so the prepared cache
is rebuilt exactly when the content changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from lmreason.data.files import FORMATS, TABULAR_FORMATS, read_table, read_text
from lmreason.errors import UserError

# File stems recognised as splits in a data directory, and the split each means.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "ood": "ood",
}


@dataclass
class RawSource:
    content_hash: str  # changes whenever the source's content does
    origin: str  # where it came from, for messages
    read: Callable[[], dict[str, pd.DataFrame]]  # split name -> frame with the source's columns (lazy:
    # a cache hit never pays for parsing or generating)


def has_ood_split(data_cfg: DictConfig) -> bool | None:
    """Whether the source yields an `ood` split, known without reading it (None: only loading tells)."""
    if data_cfg.source == "reasoning":
        return data_cfg.ood_config is not None and bool(data_cfg.sizes.get("ood"))
    if data_cfg.source in ("local", "bigbench"):
        path = Path(data_cfg.path).expanduser()
        if not path.exists():
            return None  # loading reports the missing path
        if data_cfg.source == "local" and path.is_dir():
            return any(
                SPLIT_ALIASES.get(f.stem.lower()) == "ood" and f.suffix.lower() in FORMATS for f in path.iterdir()
            )
        return False  # one file is split at random: nothing in it is out of distribution
    return None


def ood_description(data_cfg: DictConfig) -> str:
    """What makes the `ood` split out of distribution, in one line (for the gap table)."""
    if data_cfg.source == "reasoning" and data_cfg.get("ood_config") is not None:
        same, ood = dict(data_cfg.get("id_config") or {}), dict(data_cfg.ood_config)
        changed = [
            f"{key}={value} (in distribution: {same.get(key, 'the default')})"
            for key, value in ood.items()
            if same.get(key) != value
        ]
        shift = ", ".join(changed) if changed else "the same generator settings (another seed only)"
        note = f"{data_cfg.ood_note}: " if data_cfg.get("ood_note") else ""
        return f"OOD = {note}{data_cfg.task} problems with {shift}"
    if data_cfg.source == "local":
        return f"OOD = the ood.* file of {data_cfg.path}"
    return "OOD = the source's ood split"


def load_source(data_cfg: DictConfig, mode: str) -> RawSource:
    loaders = {"local": _load_local, "reasoning": _load_reasoning, "bigbench": _load_bigbench, "hub": _load_hub}
    if data_cfg.source not in loaders:
        raise UserError(f"data.source='{data_cfg.source}' is unknown; use one of {', '.join(loaders)}")
    return loaders[data_cfg.source](data_cfg, mode)


def _hash_bytes(*chunks: bytes) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(hashlib.sha256(chunk).digest())
    return digest.hexdigest()


def _load_local(cfg: DictConfig, mode: str) -> RawSource:
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        files = {}
        for file in sorted(path.iterdir()):
            split = SPLIT_ALIASES.get(file.stem.lower(), None)
            if file.suffix.lower() in FORMATS and FORMATS[file.suffix.lower()] in TABULAR_FORMATS and split:
                if split in files:
                    raise UserError(
                        f"{path}: both {files[split].name} and {file.name} are the '{split}' split; keep one"
                    )
                files[split] = file
        if not files:
            raise UserError(
                f"{path}: no split files found; name them train.*, validation.* (or dev.*), test.*, ood.* "
                f"with extension {', '.join('.' + f for f in TABULAR_FORMATS)}"
            )
        digest = _hash_bytes(*(f"{s}:{f.name}".encode() + f.read_bytes() for s, f in sorted(files.items())))
        return RawSource(
            digest, str(path), lambda: {split: read_table(file, cfg.format) for split, file in files.items()}
        )
    if not path.exists():
        raise UserError(
            f"data.path={cfg.path}: no such file or directory; "
            "give a CSV/TSV/JSON/JSONL/Parquet file or a directory of split files"
        )
    return RawSource(_hash_bytes(path.read_bytes()), str(path), lambda: {"train": read_table(path, cfg.format)})


def _load_reasoning(cfg: DictConfig, mode: str) -> RawSource:
    import reasoning_gym

    from lmreason.data.reasoning import generate_reasoning_splits

    id_config = OmegaConf.to_container(cfg.id_config, resolve=True)
    ood_config = None if cfg.ood_config is None else OmegaConf.to_container(cfg.ood_config, resolve=True)
    sizes = {k: int(v) for k, v in cfg.sizes.items()}

    def read():
        rows = generate_reasoning_splits(cfg.task, sizes, cfg.seed, id_config, ood_config, mode=mode)
        return {split: pd.DataFrame.from_records(r) for split, r in rows.items()}

    recipe = json.dumps(
        {
            "task": cfg.task,
            "sizes": sizes,
            "seed": cfg.seed,
            "id": id_config,
            "ood": ood_config,
            "mode": mode,
            "reasoning_gym": getattr(reasoning_gym, "__version__", "?"),
        },
        sort_keys=True,
    )
    return RawSource(_hash_bytes(recipe.encode()), f"reasoning-gym:{cfg.task}", read)


def _load_bigbench(cfg: DictConfig, mode: str) -> RawSource:
    path = Path(cfg.path).expanduser()
    if path.is_dir():
        path = path / "task.json"
    if not path.is_file():
        raise UserError(f"data.path={cfg.path}: no BIG-bench task.json there; point data.path at a task.json")
    try:
        task = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    examples = task.get("examples") if isinstance(task, dict) else None
    if not examples:
        raise UserError(f"{path}: no 'examples' list; is this a BIG-bench task.json?")
    rows = []
    for number, example in enumerate(examples, start=1):
        scores = example.get("target_scores")
        if not isinstance(scores, dict) or not scores:
            raise UserError(
                f"{path}: example {number} has no 'target_scores'; only multiple-choice BIG-bench tasks can be "
                "used for classification"
            )
        best = max(scores.values())
        label = next(choice for choice, score in scores.items() if score == best)
        rows.append({"text": example.get("input", ""), "label": label, "n_choices": len(scores)})
    return RawSource(_hash_bytes(path.read_bytes()), str(path), lambda: {"train": pd.DataFrame.from_records(rows)})


def hub_reachable(timeout: float = 2.0) -> bool:
    """A quick look-up of the hub's host: offline, `datasets` would otherwise retry for half a minute."""
    import socket
    import threading
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    found = []

    def look_up():  # getaddrinfo ignores socket timeouts: run it in a thread we stop waiting for
        try:
            found.append(bool(socket.getaddrinfo(host, 443)))
        except OSError:
            found.append(False)

    thread = threading.Thread(target=look_up, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(found and found[0])


def _load_hub(cfg: DictConfig, mode: str) -> RawSource:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not hub_reachable()
    if offline:
        # Offline: only a copy already in the local datasets cache can load; fail at once otherwise.
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import datasets

    try:
        loaded = datasets.load_dataset(cfg.dataset_id, cfg.subset, revision=cfg.revision)
    except Exception as exc:  # ConnectionError, OSError, DatasetNotFoundError, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = (
            "the Hugging Face hub cannot be reached (offline) and it is not in the local datasets cache"
            if offline
            else f"could not load it from the Hugging Face hub ({reason[:200]})"
        )
        raise UserError(
            f"data.dataset_id={cfg.dataset_id}: {where}; check the id and your network, "
            "or download it where you are online and use data=local data.path=<file>"
        ) from None
    names = {ours: theirs for ours, theirs in cfg.split_names.items()}
    frames = {}
    for theirs, split in loaded.items():
        ours = next((o for o, t in names.items() if t == theirs), SPLIT_ALIASES.get(theirs, theirs))
        frame = split.to_pandas()
        label_feature = split.features.get(cfg.label_column)
        if getattr(label_feature, "names", None):  # ClassLabel: keep names, not ids
            frame[cfg.label_column] = [
                label_feature.names[i] if i is not None and i >= 0 else None for i in frame[cfg.label_column]
            ]
        frames[ours] = frame.astype(object).where(frame.notna(), None)
    fingerprints = "".join(f"{k}:{v._fingerprint}" for k, v in sorted(loaded.items()))
    return RawSource(_hash_bytes(fingerprints.encode()), f"hub:{cfg.dataset_id}", lambda: frames)
