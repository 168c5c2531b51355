"""Perturbations: plain, seeded functions `text, rng -> (text, applied)` with a declared expectation.

CheckList's two expectations: INV (the label must not change) and DIR (the label must change
to a known one). Each function is deterministic given its `random.Random`, never calls the
network, and returns `applied=False` (with the text unchanged) where it does not apply to an
example. They are reused by training-time augmentation (INV only) in later issues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

INV = "INV"  # the label must not change
DIR = "DIR"  # the label must change to a known one


@dataclass(frozen=True)
class Perturbation:
    """One test of a suite: `apply(text, rng) -> (text, applied)`; DIR tests also map gold -> expected label."""

    suite: str  # character, word, reasoning
    name: str  # typos, case, ...: the report row is "<suite>/<name>"
    expectation: str  # INV or DIR
    apply: Callable
    expected_label: Optional[Callable[[str], Optional[str]]] = (
        None  # DIR: gold label name -> expected label name (None: n/a)
    )
    about: str = ""  # one line: what it does

    @property
    def key(self) -> str:
        return f"{self.suite}/{self.name}"


def identity(text: str, rng) -> tuple[str, bool]:
    """The text unchanged (a sanity row: its flip rate must be 0)."""
    return text, True
