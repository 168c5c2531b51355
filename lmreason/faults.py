"""Test-only fault injection at named points, so crash tests are deterministic (not timed signals).

    LMREASON_FAULT_AT="<point>:<n>:<action>"   the n-th time this process reaches <point>, do <action>
    LMREASON_RENDEZVOUS="<point>:<dir>:<k>"    at <point>, wait (up to a minute) until k processes arrived

Actions: KILL, TERM, INT (send that signal to this process: KILL is a pre-emption, no handler and no
cleanup run), ENOSPC (raise "No space left on device" as a full disk would).
Points: train_step (gradients computed, optimizer not stepped), validation (after the first
validation batch), checkpoint_write (weights written into the temporary dir, trainer state not yet),
checkpoint_swap (old checkpoint moved aside, new one not yet in place), prepare_write (cache
written under its temporary name, not yet renamed into place).
With neither variable set (always, outside tests) `fault_point` is a dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections import Counter
from pathlib import Path

_reached: Counter = Counter()


def fault_point(name: str) -> None:
    """Mark reaching `name`; act if a test asked for a fault here."""
    spec = os.environ.get("LMREASON_FAULT_AT")
    if spec:
        point, count, action = spec.split(":")
        if point == name:
            _reached[name] += 1
            if _reached[name] == int(count):
                _act(action, name)
    meeting = os.environ.get("LMREASON_RENDEZVOUS")
    if meeting:
        point, folder, expected = meeting.rsplit(":", 2)
        if point == name:
            _rendezvous(Path(folder), int(expected))


def _act(action: str, name: str) -> None:
    if action == "ENOSPC":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"(injected at {name})")
    os.kill(os.getpid(), getattr(signal, f"SIG{action}"))
    if action == "KILL":
        time.sleep(60)  # the signal is delivered asynchronously: never run past this point


def _rendezvous(folder: Path, expected: int, timeout_s: float = 60.0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout_s
    while len(list(folder.iterdir())) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
