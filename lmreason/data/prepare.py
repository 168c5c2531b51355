"""`prepare`: source -> validated splits -> tokenized Arrow datasets, cached by fingerprint.

The cache key covers the source content, the tokenizer, max length, the task,
the data config and the augmentation (when there is one), so a second run reuses it and any change rebuilds it. The
cache directory is written under a temporary name and renamed into place, so a
crash or a concurrent `prepare` (a multirun) never leaves a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from lmreason.data.augment import AugmentContext, active_methods, augment_train, cache_key
from lmreason.data.examples import check_label_sets, normalize_split
from lmreason.data.sources import load_source
from lmreason.data.splitting import stratified_split, subsample
from lmreason.errors import UserError
from lmreason.faults import fault_point

log = logging.getLogger(__name__)
CACHE_FORMAT = 2  # bump when the layout of a prepared dataset changes


@dataclass
class PreparedData:
    splits: dict  # split name -> datasets.Dataset (tokenized, with text and metadata columns)
    label_names: list[str]  # classification label set (empty for task=gen)
    summary: dict  # rows, label distribution, token lengths, truncation per split
    path: Path  # the cache directory
    reused: bool  # True when an identical cache was found
    metadata_columns: list[str] = field(default_factory=list)


def tokenizer_fingerprint(tokenizer) -> str:
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(
        backend.to_str().encode() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()
    )
    digest.update(str(getattr(tokenizer, "chat_template", "") or "").encode())
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def prepare_fingerprint(cfg: DictConfig, content_hash: str, tokenizer) -> str:
    recipe = {
        "format": CACHE_FORMAT,
        "content": content_hash,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": cfg.model.max_length,
        "task": OmegaConf.to_container(cfg.task, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
    }
    augmentation = cache_key(cfg.get("augmentation"))
    if augmentation is not None:  # absent without augmentation: the caches made before it stay valid
        recipe["augmentation"] = augmentation
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:20]


def prepare_data(cfg: DictConfig, task, tokenizer=None) -> PreparedData:
    """Load, validate, split, tokenize (with `task`) and cache `cfg.data` for `cfg.model` and `cfg.task`.

    Raises:
        UserError: anything wrong with the source (see data.files / data.examples).
    """
    from lmreason.models.loading import load_tokenizer

    mode = task.name
    tokenizer = tokenizer or load_tokenizer(cfg.model, cfg.cache_dir)
    if hasattr(task, "prepare_data"):  # task=multi: several sources, each prepared (and cached) through here
        return task.prepare_data(cfg, tokenizer)
    raw = load_source(cfg.data, mode)
    key = prepare_fingerprint(cfg, raw.content_hash, tokenizer)
    path = Path(cfg.cache_dir).expanduser() / "prepared" / f"{cfg.data.name}-{key}"
    replace = path.is_dir()  # rebuilt although present: force=true, or unreadable
    if path.is_dir() and not cfg.get("force", False):
        try:
            prepared = load_prepared(path)
            log.info("prepare: reusing cached data %s", path)
            return prepared
        except Exception as exc:  # a corrupt cache is rebuilt, never trusted
            log.warning("prepare: cache %s is unreadable (%s); rebuilding", path, exc)
    splits, label_names, metadata = build_splits(cfg, raw)
    augmentation = None
    if active_methods(cfg.get("augmentation")):  # the training split only, before tokenizing
        from lmreason.evaluation.perturb.suites import is_uncased

        context = AugmentContext(mode, label_names, is_uncased(tokenizer), cfg.cache_dir)
        splits["train"], augmentation = augment_train(splits, cfg.augmentation, context)
    tokenized, summary = tokenize_splits(cfg, task, splits, label_names, tokenizer)
    if augmentation is not None:
        summary["augmentation"] = augmentation
    summary.update(
        {
            "source": raw.origin,
            "fingerprint": key,
            "cache": str(path),
            "task": mode,
            "model": cfg.model.name_or_path,
            "max_length": cfg.model.max_length,
        }
    )
    write_prepared(
        path, tokenized, {"label_names": label_names, "summary": summary, "metadata_columns": metadata}, replace
    )
    log.info("prepare: cached at %s", path)
    return load_prepared(path, reused=False)


def build_splits(cfg: DictConfig, raw) -> tuple[dict, list[str], list[str]]:
    """Validated, canonical split frames; the label set; the metadata columns."""
    mode, data_cfg = cfg.task.name, cfg.data
    frames = raw.read()
    own_splits = len(frames) > 1 or "train" not in frames
    if "train" not in frames:
        raise UserError(f"{raw.origin}: no training split; name a file train.* (found: {', '.join(frames)})")
    splits = {name: normalize_split(frame, data_cfg, mode, f"{raw.origin} [{name}]") for name, frame in frames.items()}
    stratify = "label" if mode == "cls" else None
    if not own_splits:
        if data_cfg.split_ratios.get("ood"):
            raise UserError(
                f"data.split_ratios.ood={data_cfg.split_ratios.ood}: a random share of {raw.origin} "
                "is not out of distribution; "
                "drop it from data.split_ratios and give OOD examples their own file (ood.* in a data directory)"
            )
        splits = stratified_split(splits["train"], dict(data_cfg.split_ratios), data_cfg.seed, stratify)
    elif "validation" not in splits:
        # Early stopping needs a validation split: carve it from train, keep the source's test.
        ratio = data_cfg.split_ratios.get("validation", 0.1) or 0.1
        carved = stratified_split(splits["train"], {"train": 1 - ratio, "validation": ratio}, data_cfg.seed, stratify)
        splits.update(carved)
    for name, n in data_cfg.max_rows.items():
        if name not in splits:
            raise UserError(f"data.max_rows.{name}: no split '{name}'; splits are {', '.join(splits)}")
        splits[name] = subsample(splits[name], int(n), data_cfg.seed)
    label_names = check_label_sets(splits, raw.origin) if mode == "cls" else []
    canonical = {"text", "text_pair", "label", "prompt", "completion"}
    metadata = [c for c in splits["train"].columns if c not in canonical]
    return splits, label_names, metadata


def tokenize_splits(cfg, task, splits, label_names, tokenizer):
    import datasets

    mode = task.name
    tokenized, summary = {}, {"splits": {}}
    for name, frame in splits.items():
        columns = task.tokenize(frame, tokenizer, cfg, label_names)
        full = np.asarray(columns.pop("full_length"))
        lengths = np.asarray(columns["length"])
        info = {
            "rows": len(frame),
            "tokens_p50": int(np.percentile(full, 50)),
            "tokens_p95": int(np.percentile(full, 95)),
            "tokens_max": int(full.max()),
            "truncated_share": float((full > lengths).mean()),
        }
        if mode == "cls":
            counts = frame["label"].value_counts()
            info["labels"] = {label: int(counts.get(label, 0)) for label in label_names}
        summary["splits"][name] = info
        for column in frame.columns:
            columns.setdefault(column, frame[column].tolist())
        tokenized[name] = datasets.Dataset.from_dict(columns)
    return tokenized, summary


def write_prepared(path: Path, tokenized: dict, meta: dict, replace: bool = False) -> None:
    """Write next to `path` under a unique name, then rename into place (atomic on one filesystem).

    `replace`: swap out a cache already at `path` (force=true, or it was unreadable). Otherwise a
    complete cache that a concurrent prepare put there first is kept: same fingerprint, same content,
    and that process may be reading it.
    """
    import datasets

    datasets.disable_progress_bars()  # our own summary says what was written
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.DatasetDict(tokenized).save_to_disk(str(tmp))
        (tmp / "lmreason_meta.json").write_text(json.dumps(meta, indent=2))
        fault_point("prepare_write")  # tests: two processes arrive here together
        if path.exists() and (replace or not (path / "lmreason_meta.json").is_file()):
            trash = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / "lmreason_meta.json").is_file():  # lost a race to a concurrent prepare: theirs is equal
                raise
    except OSError as exc:
        raise UserError(
            f"cache_dir={path.parent.parent}: cannot write the prepared data ({exc.strerror or exc}); "
            "set cache_dir to a writable directory"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_prepared(path: Path, reused: bool = True) -> PreparedData:
    import datasets

    meta = json.loads((path / "lmreason_meta.json").read_text())
    loaded = datasets.load_from_disk(str(path))
    canonical = ["train", "validation", "test", "ood"]
    names = sorted(loaded, key=lambda n: (canonical.index(n) if n in canonical else len(canonical), n))
    return PreparedData(
        splits={name: loaded[name] for name in names},
        label_names=meta["label_names"],
        summary=meta["summary"],
        path=path,
        reused=reused,
        metadata_columns=meta.get("metadata_columns", []),
    )
