"""EDA's four operations (Wei & Zou 2019, "EDA: Easy Data Augmentation Techniques for Boosting Performance
on Text Classification Tasks"), on whitespace-separated words.

Each is `(text, rng, rate[, synonyms]) -> (text, applied)`, like the perturbations of
lmreason.evaluation.perturb: deterministic given its `random.Random`, offline, and `applied=False`
(text unchanged) where it cannot do what it says. `rate` is EDA's alpha: replacement, insertion
and swap act n = max(1, int(rate x words)) times (never when rate is 0); deletion drops each word
with probability `rate`, at least one and never all. `synonyms(word) -> [candidates]` is the
robustness suite's source (lmreason.evaluation.perturb.word.Synonyms). The spacing between words
is kept (a newline stays a newline); punctuation attached to a word moves with it.
"""

from __future__ import annotations

import re

from lmreason.evaluation.perturb.word import STOPWORDS, match_case

TOKEN = re.compile(r"^(\W*)([A-Za-z]+(?:'[a-z]+)?)(\W*)$")  # a word with punctuation around it: "(film)," -> film


def changed_words(n_words: int, rate: float) -> int:
    """How many words an operation changes: EDA's max(1, int(alpha x n)); none at rate 0."""
    return 0 if rate <= 0 or n_words == 0 else max(1, int(rate * n_words))


def _split(text: str) -> tuple[str, list[str], list[str], str]:
    """(leading space, words, the spaces between them, trailing space)."""
    body = text.strip()
    lead, trail = text[: len(text) - len(text.lstrip())], text[len(text.rstrip()) :]
    parts = re.split(r"(\s+)", body) if body else []
    return lead, parts[0::2], parts[1::2], trail


def _join(lead: str, words: list[str], gaps: list[str], trail: str) -> str:
    out = words[0] if words else ""
    for gap, w in zip(gaps, words[1:]):
        out += gap + w
    return lead + out + trail


def _content(token: str) -> re.Match | None:
    """The word inside `token` when it may be replaced (letters, not a function word), else None."""
    m = TOKEN.match(token)
    return m if m and m.group(2).lower() not in STOPWORDS and len(m.group(2)) > 1 else None


def synonym_replacement(text: str, rng, rate: float, synonyms) -> tuple[str, bool]:
    """n content words (distinct positions) each replaced by a random synonym; punctuation and case kept."""
    lead, words, gaps, trail = _split(text)
    eligible = [i for i, w in enumerate(words) if (m := _content(w)) and synonyms(m.group(2))]
    n = min(changed_words(len(words), rate), len(eligible))
    for i in sorted(rng.sample(eligible, n)):
        m = _content(words[i])
        new = match_case(rng.choice(synonyms(m.group(2))), m.group(2))
        words[i] = m.group(1) + new + m.group(3)
    out = _join(lead, words, gaps, trail)
    return out, out != text


def random_insertion(text: str, rng, rate: float, synonyms) -> tuple[str, bool]:
    """n times: a synonym of a random content word inserted at a random position."""
    lead, words, gaps, trail = _split(text)
    sources = [m.group(2) for w in words if (m := _content(w)) and synonyms(m.group(2))]
    n = changed_words(len(words), rate)
    if not sources or n == 0:
        return text, False
    for _ in range(n):
        new = rng.choice(synonyms(rng.choice(sources))).lower()
        at = rng.randrange(len(words) + 1)
        words.insert(at, new)
        gaps.insert(at, " ")
    return _join(lead, words, gaps, trail), True


def random_swap(text: str, rng, rate: float) -> tuple[str, bool]:
    """n times: two words at different positions swapped (the words themselves are all kept)."""
    lead, words, gaps, trail = _split(text)
    n = changed_words(len(words), rate)
    if len(set(words)) < 2 or n == 0:
        return text, False
    for _ in range(n):
        i, j = rng.sample(range(len(words)), 2)
        words[i], words[j] = words[j], words[i]
    out = _join(lead, words, gaps, trail)
    return out, out != text


def random_deletion(text: str, rng, rate: float) -> tuple[str, bool]:
    """Each word dropped with probability `rate`: at least one, never all (EDA keeps a random one)."""
    lead, words, gaps, trail = _split(text)
    if len(words) < 2 or rate <= 0:
        return text, False
    drop = {i for i in range(len(words)) if rng.random() < rate}
    if not drop:
        drop = {rng.randrange(len(words))}
    if len(drop) == len(words):
        drop.discard(rng.randrange(len(words)))
    kept = [i for i in range(len(words)) if i not in drop]
    # the gap before each kept word (after the first) is the one that preceded it
    out_words = [words[i] for i in kept]
    out_gaps = [gaps[i - 1] if i > 0 else " " for i in kept[1:]]
    return _join(lead, out_words, out_gaps, trail), True


OPERATIONS = {
    "synonym_replacement": synonym_replacement,
    "random_insertion": random_insertion,
    "random_swap": random_swap,
    "random_deletion": random_deletion,
}
NEEDS_SYNONYMS = ("synonym_replacement", "random_insertion")


def apply(operation: str, text: str, rng, rate: float, synonyms=None) -> tuple[str, bool]:
    """One EDA operation by name."""
    if operation in NEEDS_SYNONYMS:
        return OPERATIONS[operation](text, rng, rate, synonyms)
    return OPERATIONS[operation](text, rng, rate)
