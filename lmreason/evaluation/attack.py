"""The greedy word-substitution attack (the recipe of TextAttack's greedy-WIR search, Jin et al. 2020).

For each example the model classifies correctly:
1. rank the content words by importance: the drop in the gold-label probability when the word is
   deleted (leave-one-out; one query per word);
2. in that order, try every synonym of the word (sources: perturb.word) that keeps the sentence
   meaning (cosine of MiniLM sentence embeddings >= threshold, against the original); keep the one
   that lowers the gold probability most, if any does;
3. stop at the first label flip, when `max_changed_share` of the words are substituted, or when the
   query budget (model calls per example, the ranking included) is spent.
Queries are batched across all examples still being attacked: one `classify_texts` call per step
(leave-one-out for every example at once, then one batch of candidates per greedy step).

Reported, as TextAttack does: clean accuracy, after-attack accuracy, attack success rate
(flipped / attacked correct examples), mean share of words changed (over successful attacks),
mean queries (over attacked examples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from lmreason.evaluation.perturb.word import WORD, content_words, match_case
from lmreason.evaluation.predict import classify_texts


@dataclass
class _State:
    index: int  # row in the attacked sample
    original: str
    words: list  # WORD matches of the original: positions to substitute
    n_words: int
    budget: int
    current: list[str] = field(default_factory=list)  # current word at each position
    order: list[int] = field(default_factory=list)  # positions by importance, most important first
    step: int = 0
    queries: int = 0
    changed: set = field(default_factory=set)
    gold_prob: float = 1.0
    done: bool = False
    success: bool = False
    final: object = None  # (C,) probabilities of the text that flipped the label

    def text(self, replace: dict | None = None) -> str:
        replace = replace or {}
        pieces, at = [], 0
        for pos, m in enumerate(self.words):
            pieces += [self.original[at : m.start()], replace.get(pos, self.current[pos])]
            at = m.end()
        return "".join(pieces) + self.original[at:]

    def without(self, pos: int) -> str:
        m = self.words[pos]
        return (self.original[: m.start()] + self.original[m.end() :]).replace("  ", " ").strip()


@dataclass
class AttackSettings:
    """How the attack may change a text: `synonyms(word) -> list[str]`, `meaning` (a MeaningCheck),
    `budget` (model calls per example, the ranking included) and `max_changed_share` of its words."""

    synonyms: Callable[[str], list[str]]
    meaning: Any
    budget: int = 200
    max_changed_share: float = 0.2


def greedy_attack(
    session, texts: list[str], pairs: list[str] | None, gold: np.ndarray, clean: np.ndarray, settings: AttackSettings
) -> tuple[dict, list[dict]]:
    """Attack every correctly classified text; returns (figures, one record per example attacked).

    `clean`: (N, C) probabilities of the unperturbed texts (their queries are not counted, as in
    TextAttack, where the first call is the "goal function" check).
    """
    synonyms, meaning = settings.synonyms, settings.meaning
    budget, max_changed_share = settings.budget, settings.max_changed_share
    n = len(texts)
    correct = clean.argmax(axis=1) == gold
    states = []
    for i in np.flatnonzero(correct):
        words = list(WORD.finditer(texts[i]))
        content = {m.start() for m in content_words(texts[i])}
        s = _State(
            int(i),
            texts[i],
            words,
            len(words),
            budget,
            current=[m.group() for m in words],
            gold_prob=float(clean[i, gold[i]]),
        )
        s.order = [p for p, m in enumerate(words) if m.start() in content]
        states.append(s)
    # 1. leave-one-out importance, all examples in one batch
    loo_texts, owners = [], []
    for s in states:
        positions = s.order[: s.budget]
        loo_texts += [s.without(p) for p in positions]
        owners += [(s, p) for p in positions]
        s.queries += len(positions)
    if loo_texts:
        probs = classify_texts(session, loo_texts, [pairs[s.index] for s, _ in owners] if pairs else None)
        drop: dict[int, dict[int, float]] = {}
        for (s, p), row in zip(owners, probs):
            drop.setdefault(id(s), {})[p] = s.gold_prob - float(row[gold[s.index]])
        for s in states:
            scores = drop.get(id(s), {})
            s.order = sorted(scores, key=lambda p: -scores[p])  # positions past the budget are never tried
    # 2. greedy substitution, one batched query per step over every live example
    for s in states:
        s.done = not s.order or s.queries >= s.budget
    while True:
        batch, owners = [], []
        originals, candidates, meta = [], [], []
        for s in states:
            if s.done:
                continue
            limit = max(1, int(max_changed_share * s.n_words))
            while s.step < len(s.order):
                pos = s.order[s.step]
                options = [match_case(w, s.current[pos]) for w in synonyms(s.words[pos].group())]
                options = options[: s.budget - s.queries]
                s.step += 1
                if options and len(s.changed | {pos}) <= limit:
                    for option in options:
                        originals.append(s.original)
                        candidates.append(s.text({pos: option}))
                        meta.append((s, pos, option))
                    break
            else:
                s.done = True
        if not meta:
            break
        keep = meaning.accept(originals, candidates)  # encoder calls: not model queries
        for (s, pos, option), text, ok in zip(meta, candidates, keep):
            if ok:
                batch.append(text)
                owners.append((s, pos, option))
        if batch:
            probs = classify_texts(session, batch, [pairs[s.index] for s, _, _ in owners] if pairs else None)
        best: dict[int, tuple] = {}
        for k, (s, pos, option) in enumerate(owners):
            s.queries += 1
            p_gold = float(probs[k, gold[s.index]])
            flipped = int(probs[k].argmax()) != gold[s.index]
            score = (flipped, -p_gold)
            if id(s) not in best or score > best[id(s)][0]:
                best[id(s)] = (score, pos, option, probs[k])
        for s in {id(s): s for s, _, _ in meta}.values():
            if id(s) in best:
                (flipped, neg_p), pos, option, row = best[id(s)]
                if flipped or -neg_p < s.gold_prob:
                    s.current[pos] = option
                    s.changed.add(pos)
                    s.gold_prob = -neg_p
                if flipped:
                    s.done, s.success, s.final = True, True, row
            limit = max(1, int(max_changed_share * s.n_words))
            if s.queries >= s.budget or len(s.changed) >= limit:
                s.done = True
    successes = [s for s in states if s.success]
    figures = {
        "examples": n,
        "clean_acc": float(correct.mean()) if n else None,
        "after_attack_acc": float((correct.sum() - len(successes)) / n) if n else None,
        "success_rate": len(successes) / len(states) if states else None,
        "attacked": len(states),
        "succeeded": len(successes),
        "mean_words_changed": float(np.mean([len(s.changed) / max(s.n_words, 1) for s in successes]))
        if successes
        else None,
        "mean_queries": float(np.mean([s.queries for s in states])) if states else None,
        "query_budget": budget,
        "max_changed_share": max_changed_share,
    }
    records = [
        {
            "index": s.index,
            "original": s.original,
            "perturbed": s.text(),
            "success": s.success,
            "queries": s.queries,
            "words_changed": len(s.changed),
            "probs": s.final,
        }
        for s in states
    ]
    return figures, records
