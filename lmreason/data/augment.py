"""Training-time augmentation (`augmentation=eda`, `augmentation=perturb`, or both): extra rows for the training
split only.

`prepare_data` calls `augment_train` after the splits are made (and subsampled by data.max_rows) and before
tokenizing, so validation, test and OOD are never touched. Each method adds up to `copies` rows per training row:
- eda: one of EDA's operations (lmreason.data.eda), drawn by the operation weights;
- perturb: one of the robustness suites' INV tests (lmreason.evaluation.perturb), chosen at random among those
  that apply to the row; synonym substitutions pass the meaning check (one batch for the whole split).
An augmented row is a copy of its source row (label / completion and metadata) with the text (task=cls: `text`;
task=gen: the prompt) changed, and carries `augmented_from` (the source row's index; originals: -1) and
`augmented_by` ("eda/random_swap", ...; originals: ""). A row is dropped when it equals its source or an earlier
copy, or when its text is one of an evaluation split's (augmentation must not put a validation text into train).
Every row has its own generator (seed, method, row, copy): the same seed and config give the same rows.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from lmreason.errors import UserError
from lmreason.evaluation.perturb import INV
from lmreason.evaluation.perturb import suites as perturb_suites

METHODS = ("eda", "perturb")
EDA_OPERATIONS = ("synonym_replacement", "random_insertion", "random_swap", "random_deletion")
PERTURB_SUITES = ("character", "word", "reasoning")  # identity adds nothing; the DIR tests change the label
SYNONYM_SOURCES = ("embedding", "wordnet")


def inv_test_keys() -> list[str]:
    """character/typos, ..., reasoning/distractor: the tests `perturb.suites` may name one by one."""
    tests = perturb_suites.build_tests(PERTURB_SUITES, (), perturb_suites.SuiteSettings())
    return [t.key for t in tests if t.expectation == INV]


def active_methods(aug_cfg) -> list[str]:
    """The methods that add rows: set in the config, with copies > 0."""
    if aug_cfg is None or int(aug_cfg.get("copies", 0) or 0) <= 0:
        return []
    return [m for m in METHODS if aug_cfg.get(m) is not None]


# ------------------------------------------------------------------ config
def check_config(aug_cfg, task_name: str) -> None:
    """Bad settings as one line, before any data is prepared.

    Raises:
        UserError: copies < 0, rate outside [0, 1], an unknown synonym source or suite, EDA on task=gen, ...
    """
    if aug_cfg.copies is None or aug_cfg.copies < 0:
        raise UserError(
            f"augmentation.copies={aug_cfg.copies}: must be >= 0 (augmented rows each method adds per training row)"
        )
    if aug_cfg.rate is None or not 0 <= aug_cfg.rate <= 1:
        raise UserError(f"augmentation.rate={aug_cfg.rate}: must be in [0, 1] (the share of a row's words changed)")
    unknown = [s for s in aug_cfg.synonyms.sources if s not in SYNONYM_SOURCES]
    if unknown:
        raise UserError(
            f"augmentation.synonyms.sources: unknown source {unknown[0]!r}; known: {', '.join(SYNONYM_SOURCES)}"
        )
    if aug_cfg.synonyms.neighbours < 1:
        raise UserError(f"augmentation.synonyms.neighbours={aug_cfg.synonyms.neighbours}: must be >= 1")
    if aug_cfg.get("eda") is not None:
        _check_eda(aug_cfg, task_name)
    if aug_cfg.get("perturb") is not None:
        _check_perturb(aug_cfg.perturb)


def _check_eda(aug_cfg, task_name: str) -> None:
    eda = aug_cfg.eda
    if task_name == "gen":
        raise UserError(
            "augmentation=eda with task=gen: a deleted, swapped or inserted word can change a prompt's answer "
            "(a dropped number changes a sum) while the completion stays; use augmentation=perturb "
            "(its suites keep the answer) or drop eda"
        )
    for op in EDA_OPERATIONS:
        if eda[op] is None or eda[op] < 0:
            raise UserError(f"augmentation.eda.{op}={eda[op]}: a weight must be >= 0 (0 turns the operation off)")
    if not any(eda[op] > 0 for op in EDA_OPERATIONS):
        raise UserError(
            "augmentation.eda: every operation's weight is 0; give one a weight > 0 (or use augmentation=none)"
        )
    if not aug_cfg.synonyms.sources and (eda.synonym_replacement > 0 or eda.random_insertion > 0):
        raise UserError(
            "augmentation.synonyms.sources is empty but eda.synonym_replacement / eda.random_insertion need synonyms; "
            "give sources=[embedding] or set those two weights to 0"
        )


def _check_perturb(pcfg) -> None:
    known = inv_test_keys()
    if not pcfg.suites:
        raise UserError(
            f"augmentation.perturb.suites is empty; give some of: {', '.join(PERTURB_SUITES)} (or tests: "
            f"{', '.join(known)})"
        )
    for suite in pcfg.suites:
        if suite in PERTURB_SUITES or suite in known:
            continue
        if suite == "reasoning/negation":
            raise UserError(
                "augmentation.perturb.suites: reasoning/negation is a DIR test (it changes the label), not "
                "label-preserving augmentation; use reasoning/rename, reasoning/reorder or reasoning/distractor"
            )
        raise UserError(
            f"augmentation.perturb.suites: unknown suite {suite!r}; known suites: {', '.join(PERTURB_SUITES)} "
            f"(or one test: {', '.join(known)})"
        )
    if not 0 < pcfg.meaning_threshold <= 1:
        raise UserError(f"augmentation.perturb.meaning_threshold={pcfg.meaning_threshold}: must be in (0, 1]")
    if pcfg.tries < 1:
        raise UserError(f"augmentation.perturb.tries={pcfg.tries}: must be >= 1 (synonym candidates per row)")
    if not 0 <= pcfg.punctuation_rate <= 1:
        raise UserError(f"augmentation.perturb.punctuation_rate={pcfg.punctuation_rate}: must be in [0, 1]")


def cache_key(aug_cfg) -> dict | None:
    """What of the augmentation decides the prepared rows (None: no augmentation, the cache key is as before).

    WordNet's presence is part of it: installing its data changes the synonyms, so the rows."""
    if not active_methods(aug_cfg):
        return None
    from omegaconf import OmegaConf

    from lmreason.evaluation.perturb.word import WordNetSynonyms

    key = OmegaConf.to_container(aug_cfg, resolve=True, enum_to_str=True)
    if "wordnet" in aug_cfg.synonyms.sources:
        key["wordnet_available"] = WordNetSynonyms().available()
    return key


# ------------------------------------------------------------------ applying it
@dataclass
class AugmentContext:
    """What augmentation needs to know about the data and the model, besides its config."""

    mode: str  # cls or gen
    label_names: list[str] = field(default_factory=list)  # cls: the renamer never renames a term a label names
    uncased: bool = False  # the tokenizer lower-cases: the case test would add copies the model cannot tell apart
    cache_dir: str | None = None  # where a packaged encoder is converted


class _Resources:
    """The sentence encoder and the synonym sources, loaded once and only when a method needs them."""

    def __init__(self, aug_cfg, cache_dir):
        self.aug_cfg, self.cache_dir = aug_cfg, cache_dir
        self._encoder = self._synonyms = None
        self.notes: list[str] = []

    @property
    def encoder(self):
        if self._encoder is None:
            from lmreason.evaluation.perturb.word import SentenceEncoder

            self._encoder = SentenceEncoder.load(self.aug_cfg.synonyms.encoder, "cpu", self.cache_dir)
        return self._encoder

    def synonyms(self, texts: list[str]):
        if self._synonyms is None:
            from lmreason.evaluation.perturb import word

            s = self.aug_cfg.synonyms
            self._synonyms, notes = word.build_synonyms(
                s.sources, lambda: self.encoder, k=int(s.neighbours), min_similarity=float(s.min_neighbour_similarity)
            )
            self.notes += notes
            self._synonyms.prefetch(m.group() for t in texts for m in word.content_words(t))
        return self._synonyms


def _rng(seed: int, method: str, row: int, copy: int) -> random.Random:
    return random.Random(f"{seed}:{method}:{row}:{copy}")


def _eda_rows(texts: list[str], aug_cfg, resources: _Resources) -> list[tuple[int, int, str, str | None]]:
    """(row, copy, operation, text or None when no operation applies) for every copy of every row."""
    from lmreason.data import eda

    weights = {op: float(aug_cfg.eda[op]) for op in EDA_OPERATIONS if aug_cfg.eda[op] > 0}
    synonyms = resources.synonyms(texts) if any(op in weights for op in eda.NEEDS_SYNONYMS) else None
    rate, out = float(aug_cfg.rate), []
    for i, text in enumerate(texts):
        for k in range(int(aug_cfg.copies)):
            rng = _rng(int(aug_cfg.seed), "eda", i, k)
            left, result = dict(weights), (i, k, "", None)
            while left:  # the drawn operation, or the next one drawn when it does not apply to this text
                op = rng.choices(list(left), weights=list(left.values()))[0]
                del left[op]
                new, ok = eda.apply(op, text, rng, rate, synonyms)
                if ok:
                    result = (i, k, op, new)
                    break
            out.append(result)
    return out


def _perturb_rows(texts: list[str], answers: list, aug_cfg, ctx: AugmentContext, resources: _Resources):
    """(row, copy, test key, text or None) for every copy of every row; (candidates, rejected) by the meaning check.

    `answers`: per row, what the renamer must leave alone (task=gen: the completion; cls: the label set)."""
    pcfg = aug_cfg.perturb
    chosen = set(pcfg.suites)
    suites = [s for s in PERTURB_SUITES if s in chosen or any(c.startswith(f"{s}/") for c in chosen)]
    synonyms = resources.synonyms(texts) if "word" in suites else None
    settings = perturb_suites.SuiteSettings(
        character_rate=float(aug_cfg.rate),
        punctuation_rate=float(pcfg.punctuation_rate),
        word_rate=float(aug_cfg.rate),
        meaning_threshold=float(pcfg.meaning_threshold),
    )

    def tests_for(labels):
        built = perturb_suites.build_tests(suites, labels, settings, synonyms, ctx.uncased)
        return [t for t in built if t.expectation == INV and (t.suite in chosen or t.key in chosen)]

    shared = tests_for(ctx.label_names) if ctx.mode == "cls" else None
    results, pending = [], []  # pending: (position in results, [synonym candidates])
    for i, text in enumerate(texts):
        tests = shared if shared is not None else tests_for((answers[i],))
        for k in range(int(aug_cfg.copies)):
            rng = _rng(int(aug_cfg.seed), "perturb", i, k)
            order = rng.sample(tests, len(tests))
            result = (i, k, "", None)
            for test in order:
                if test.suite == "word":
                    found = []
                    for attempt in range(int(pcfg.tries)):
                        new, ok = test.apply(text, _rng(int(aug_cfg.seed), f"perturb#{attempt}", i, k))
                        if ok and new not in found:
                            found.append(new)
                    if found:
                        pending.append((len(results), found))
                        result = (i, k, test.key, None)
                        break
                    continue
                new, ok = test.apply(text, rng)
                if ok:
                    result = (i, k, test.key, new)
                    break
            results.append(result)
    rejected = 0
    if pending:
        from lmreason.evaluation.perturb.word import MeaningCheck

        check = MeaningCheck(resources.encoder, float(pcfg.meaning_threshold))
        verdicts = iter(
            check.accept(
                [texts[results[at][0]] for at, found in pending for _ in found], [c for _, f in pending for c in f]
            )
        )
        for at, found in pending:
            passed = [c for c in found if bool(next(verdicts))]
            i, k, key, _ = results[at]
            if passed:
                results[at] = (i, k, key, passed[0])
            else:
                results[at] = (i, k, "meaning_check", None)
                rejected += 1
    return results, (sum(len(f) for _, f in pending), rejected)


def augment_train(splits: dict, aug_cfg, ctx: AugmentContext):
    """The training frame with augmented rows appended, and the report of what was added.

    `splits`: split name -> canonical frame (lmreason.data.examples); only splits["train"] grows.
    Returns (train frame, report) where report["methods"] is rows added per method.
    """
    import pandas as pd

    train = splits["train"]
    column = "text" if ctx.mode == "cls" else "prompt"
    pair = "text_pair" if ctx.mode == "cls" and "text_pair" in train.columns else None
    texts = [str(t) for t in train[column].tolist()]
    pairs = train[pair].tolist() if pair else [None] * len(texts)
    # an evaluation example (text, and pair where there is one) that augmentation must not recreate in train
    held_out = set()
    for name, frame in splits.items():
        if name != "train":
            held_out |= set(zip(frame[column].tolist(), frame[pair].tolist() if pair else [None] * len(frame)))
    resources = _Resources(aug_cfg, ctx.cache_dir)
    added: dict[str, list[tuple[int, str, str]]] = {}  # method -> (source row, key, text)
    dropped, operations, meaning = Counter(), Counter(), {}
    for method in active_methods(aug_cfg):
        if method == "eda":
            rows = _eda_rows(texts, aug_cfg, resources)
        else:
            answers = train["completion"].tolist() if ctx.mode == "gen" else None
            rows, (candidates, rejected) = _perturb_rows(texts, answers, aug_cfg, ctx, resources)
            meaning = {"candidates": candidates, "rejected": rejected}
        seen: dict[int, set] = {}  # source row -> texts its copies already have
        kept = []
        for i, _k, key, new in rows:
            if new is None:
                dropped["meaning_check" if key == "meaning_check" else "not_applicable"] += 1
                continue
            if new == texts[i] or new in seen.setdefault(i, set()):
                dropped["duplicate"] += 1
                continue
            if (new, pairs[i]) in held_out:
                dropped["equals_evaluation_example"] += 1
                continue
            seen[i].add(new)
            kept.append((i, f"{method}/{key}", new))
            operations[f"{method}/{key}"] += 1
        added[method] = kept
    out = train.assign(augmented_from=-1, augmented_by="")
    parts = [out]
    for kept in added.values():
        if kept:
            source = [i for i, _, _ in kept]
            extra = train.iloc[source].reset_index(drop=True)
            extra[column] = [t for _, _, t in kept]
            parts.append(extra.assign(augmented_from=source, augmented_by=[key for _, key, _ in kept]))
    frame = pd.concat(parts, ignore_index=True)
    report = {
        "train_rows_before": len(train),
        "train_rows_after": len(frame),
        "methods": {method: len(kept) for method, kept in added.items()},
        "operations": dict(sorted(operations.items())),
        "dropped": dict(sorted(dropped.items())),
        "copies": int(aug_cfg.copies),
        "rate": float(aug_cfg.rate),
        "seed": int(aug_cfg.seed),
        "notes": resources.notes + _unused_tests(aug_cfg, operations),
    }
    if meaning:
        report["meaning_check"] = meaning
    return frame, report


def _unused_tests(aug_cfg, operations: Counter) -> list[str]:
    """A named perturb suite or test that applied to no training row: said, not silently empty."""
    if aug_cfg.get("perturb") is None:
        return []
    notes = []
    for suite in aug_cfg.perturb.suites:
        if not any(key == f"perturb/{suite}" or key.startswith(f"perturb/{suite}/") for key in operations):
            notes.append(f"perturb/{suite} applied to no training row (its format is not in this data); skipped")
    return notes
