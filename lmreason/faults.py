"""Test-only fault injection at named points, so crash tests are deterministic (not timed signals).

    LMREASON_FAULT_AT="<point>:<n>:<action>"   the n-th time this process reaches <point>, do <action>
    LMREASON_RENDEZVOUS="<point>:<dir>:<k>"    at <point>, wait (up to a minute) until k processes arrived

Actions: KILL, TERM, INT (send that signal to this process: KILL is a pre-emption, no handler and no
cleanup run), ENOSPC (raise "No space left on device" as a full disk would); STOP and NAN are
carried out by the caller, to which `fault_point` returns them: STOP at train_step asks the
trainer for a graceful stop at the end of that step (as SIGTERM would, without a signal: safe in
process), NAN at loss makes that micro-batch's loss NaN.
Points: loss (a micro-batch's loss computed, backward not run), train_step (gradients computed,
optimizer not stepped; once per optimizer step), validation (after the first validation batch),
checkpoint_write (weights written into the temporary dir, trainer state not yet), checkpoint_swap
(old checkpoint moved aside, new one not yet in place), prepare_write (cache written under its
temporary name, not yet renamed into place).
Counts start at 0 in each process and again at `reset_counts()`, which a finetune run calls as it starts (so
runs in one test process count alike): "train_step:10:STOP" stops a fresh run at step 10.
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


CALLER_ACTIONS = ("STOP", "NAN")  # returned by `fault_point`: the caller knows how to do them


def fault_point(name: str) -> str | None:
    """Mark reaching `name`; act if a test asked for a fault here. Returns "STOP"/"NAN" for the caller to do."""
    spec = os.environ.get("LMREASON_FAULT_AT")
    action = None
    if spec:
        point, count, wanted = spec.split(":")
        if point == name:
            _reached[name] += 1
            if _reached[name] == int(count):
                action = wanted if wanted in CALLER_ACTIONS else _act(wanted, name)
    meeting = os.environ.get("LMREASON_RENDEZVOUS")
    if meeting:
        point, folder, expected = meeting.rsplit(":", 2)
        if point == name:
            _rendezvous(Path(folder), int(expected))
    return action


def reset_counts() -> None:
    """Count every point from 0 again (a finetune run calls it as it starts)."""
    _reached.clear()


def _act(action: str, name: str) -> None:
    """Do a process-level action: a signal to this process, or a full disk."""
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
