"""Checkpoints: a Hugging Face model dir (safetensors) + a plain trainer state, written atomically.

Layout of `checkpoints/<name>/`:
  model.safetensors, config.json, tokenizer files  -> `from_pretrained` loads it
  trainer_state.pt   optimizer, scheduler, RNG, step, epoch, batch position, early-stopping state
                     (tensors and plain values only: read back with torch.load(weights_only=True))
  lmreason.json      label names, task, max length, step and metrics at save time
  config.yaml        the resolved config of the run

A checkpoint is built under a temporary name and renamed into place; the one it
replaces is moved aside first and deleted last, so a crash at any moment leaves a
complete checkpoint (`recover_checkpoint` finds a moved-aside one).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
import warnings
from pathlib import Path

from lmreason.errors import UserError
from lmreason.faults import fault_point

STATE_FILE = "trainer_state.pt"
META_FILE = "lmreason.json"


def rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _swap_into_place(tmp: Path, target: Path) -> None:
    aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        os.rename(target, aside)
        fault_point("checkpoint_swap")  # tests: a kill between the two renames
    os.rename(tmp, target)
    shutil.rmtree(aside, ignore_errors=True)


def recover_checkpoint(target: Path) -> None:
    """After a crash between the two renames of `_swap_into_place`, put the moved-aside checkpoint back."""
    if target.exists():
        return
    # The newest written, should several be left by repeated crashes.
    aside = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside:
        os.rename(aside[-1], target)


def discard_partial_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Delete what a killed save left behind: unfinished `.<name>.tmp-*` dirs and moved-aside
    `.<name>.old-*` dirs whose checkpoint is in place. Call only when no save can be running."""
    removed = []
    for path in Path(checkpoints_dir).glob(".*"):
        match = re.fullmatch(r"\.(.+)\.(tmp|old)-[0-9a-f]+", path.name)
        if match and (match.group(2) == "tmp" or (path.parent / match.group(1)).is_dir()):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def save_checkpoint(target: Path, model, tokenizer, trainer_state: dict, meta: dict, config_yaml: str) -> None:
    """Write a complete checkpoint at `target`, atomically.

    Raises:
        UserError: the directory is not writable or the disk is full (the previous checkpoint stays).
    """
    import torch

    target = Path(target)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fault_point("checkpoint_write")  # tests: a kill or a full disk half way through a checkpoint
        torch.save(trainer_state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=float))
        (tmp / "config.yaml").write_text(config_yaml)
        _swap_into_place(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"cannot write checkpoint {target} ({exc.strerror or exc}); the previous checkpoint is kept. "
            "Free disk space or choose a writable output dir (hydra.run.dir=...)"
        ) from None


def link_checkpoint(source: Path, target: Path) -> None:
    """`target` becomes a copy of `source` (hard links where the filesystem allows: no extra disk or time)."""
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(source, tmp, copy_function=_link_or_copy)
        _swap_into_place(tmp, target)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # copytree gathers its failures into one shutil.Error([(src, dst, reason), ...]): show the first reason
        reason = (
            exc.args[0][0][2] if isinstance(exc, shutil.Error) and exc.args and exc.args[0] else (exc.strerror or exc)
        )
        raise UserError(
            f"cannot write checkpoint {target} ({reason}); the previous one is kept. "
            "Free disk space or choose a writable output dir (hydra.run.dir=...)"
        ) from None


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def load_trainer_state(checkpoint: Path) -> dict:
    """The trainer state, loaded without unpickling arbitrary objects.

    Raises:
        UserError: missing, or holding anything but tensors and plain values (a planted pickle).
    """
    import pickle

    import torch

    path = Path(checkpoint) / STATE_FILE
    if not path.is_file():
        raise UserError(f"{checkpoint}: no {STATE_FILE}; this is not a resumable lmreason checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as exc:
        # torch's message suggests loading with weights_only=False: exactly what must not happen here.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f"it would import {found.group(1)}" if found else "damaged or not a torch file"
        raise UserError(
            f"{path}: refused to load it: not a plain trainer state ({what}); lmreason never unpickles code. "
            "If this run dir came from elsewhere, do not trust it; otherwise start a new run"
        ) from None
