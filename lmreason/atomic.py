"""Write a file so that a reader (or a kill) never sees it half-written: a temp file beside it, then a rename."""

from __future__ import annotations

import json
import os
from pathlib import Path


def atomic_write(path, text: str) -> None:
    """`text` (UTF-8) at `path`, replacing any file there in one rename on the same filesystem.

    Makes the parent dir. Raises OSError as the filesystem does (the temp file is removed);
    callers turn it into a UserError that says which file and what to do.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path, payload) -> None:
    """`payload` as indented JSON (numpy scalars as floats), written atomically."""
    atomic_write(path, json.dumps(payload, indent=2, default=float, ensure_ascii=False) + "\n")
