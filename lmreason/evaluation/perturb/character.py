"""Character-level noise: DeepWordBug's operations (Gao et al. 2018) plus case and punctuation.

Each function perturbs about `rate` of the eligible words (at least one) and returns
`(text, applied)`; `applied` is False only where nothing could be changed. The label is
expected to survive (INV): a typo does not change what a sentence says.
"""

from __future__ import annotations

import re
import string

WORD = re.compile(r"[A-Za-z]+")
MIN_WORD = 3  # shorter words (a, an, is) are left alone: one edit would make another word

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
KEYBOARD_NEIGHBOURS = {}  # letter -> letters next to it on a QWERTY keyboard (same row and the rows above/below)
for r, row in enumerate(_ROWS):
    for c, letter in enumerate(row):
        near = {row[j] for j in (c - 1, c + 1) if 0 <= j < len(row)}
        for other in (r - 1, r + 1):
            if 0 <= other < len(_ROWS):
                near |= {_ROWS[other][j] for j in (c - 1, c, c + 1) if 0 <= j < len(_ROWS[other])}
        KEYBOARD_NEIGHBOURS[letter] = "".join(sorted(near))


def _match_case(new: str, old: str) -> str:
    return new.upper() if old.isupper() else new


def keyboard_substitute(word: str, rng) -> str:
    """One letter replaced by a keyboard neighbour ('great' -> 'greqt')."""
    i = rng.randrange(len(word))
    return word[:i] + _match_case(rng.choice(KEYBOARD_NEIGHBOURS[word[i].lower()]), word[i]) + word[i + 1 :]


def delete_letter(word: str, rng) -> str:
    """One letter dropped ('great' -> 'gret')."""
    i = rng.randrange(len(word))
    return word[:i] + word[i + 1 :]


def insert_letter(word: str, rng) -> str:
    """One random letter inserted ('great' -> 'grezat')."""
    i = rng.randrange(len(word) + 1)
    return word[:i] + rng.choice(string.ascii_lowercase) + word[i:]


def repeat_letter(word: str, rng) -> str:
    """One letter doubled ('great' -> 'greeat')."""
    i = rng.randrange(len(word))
    return word[: i + 1] + word[i] + word[i + 1 :]


def swap_adjacent(word: str, rng) -> str:
    """Two neighbouring letters swapped ('great' -> 'graet')."""
    i = rng.randrange(len(word) - 1)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


DEEPWORDBUG_OPS = (keyboard_substitute, delete_letter, insert_letter, repeat_letter, swap_adjacent)


def _pick_words(text: str, rng, rate: float) -> list[re.Match]:
    words = [m for m in WORD.finditer(text) if len(m.group()) >= MIN_WORD]
    if not words:
        return []
    count = min(len(words), max(1, round(rate * len(words))))
    return sorted(rng.sample(words, count), key=lambda m: m.start())


def _replace(text: str, matches: list[re.Match], new_words: list[str]) -> str:
    pieces, at = [], 0
    for m, new in zip(matches, new_words):
        pieces += [text[at : m.start()], new]
        at = m.end()
    return "".join(pieces) + text[at:]


def typos(text: str, rng, rate: float = 0.1) -> tuple[str, bool]:
    """About `rate` of the words (of 3+ letters) each get one DeepWordBug edit."""
    matches = _pick_words(text, rng, rate)
    new_words = []
    for m in matches:
        word = m.group()
        for _ in range(5):  # an edit can give the word back ('ee' doubled -> same letters swapped)
            new = rng.choice(DEEPWORDBUG_OPS)(word, rng)
            if new != word:
                break
        new_words.append(new)
    out = _replace(text, matches, new_words)
    return out, out != text


def change_case(text: str, rng, rate: float = 0.1) -> tuple[str, bool]:
    """About `rate` of the words upper-cased, lower-cased or capitalised (a different form than now)."""
    matches = _pick_words(text, rng, rate)
    new_words = []
    for m in matches:
        word = m.group()
        forms = [f for f in (word.upper(), word.lower(), word.capitalize()) if f != word]
        new_words.append(rng.choice(forms))
    out = _replace(text, matches, new_words)
    return out, out != text


FINAL_PUNCTUATION = re.compile(r"\s*[.!?]+\s*$")


def change_punctuation(text: str, rng, rate: float = 0.1) -> tuple[str, bool]:
    """Final punctuation dropped (or '.'/'!' added where there is none); commas dropped at `rate`."""
    body = text.rstrip()
    if FINAL_PUNCTUATION.search(body):
        body = FINAL_PUNCTUATION.sub("", body)
    elif body:
        body += rng.choice((".", "!"))
    pieces = body.split(",")
    out = pieces[0]
    for piece in pieces[1:]:
        out += ("" if rng.random() < rate else ",") + piece
    out += text[len(text.rstrip()) :]  # keep trailing whitespace as it was
    return out, out != text
