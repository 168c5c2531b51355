"""`diagnostics=[robustness]`: perturbation suites and the word-substitution attack, per split.

`run_robustness(session, task, requests, cfg, ...)` takes the evaluate command's inference session
and the split requests (the evaluated split and OOD), and for each split:
1. draws a seeded sample of `examples` rows;
2. applies every test of the chosen suites (perturb.character / word / reasoning; each declares
   INV or DIR and says per example whether it applied); word substitutions go through the
   meaning check in one batch;
3. classifies (task=cls, `classify_texts`) or generates and scores (task=gen, `score_rows`) the
   clean and all perturbed texts, batched;
4. optionally runs the greedy attack (attack.py);
5. writes eval/<split>/robustness.json (figures per test) and robustness.jsonl (every example
   whose prediction broke the expectation), prints one table (tests x splits, worst first) with a
   few flipped examples, and logs robust/<suite>/<test>/<split>/<figure> scalars to TensorBoard.

Figures per test, over the examples it applied to:
  acc_before / acc_after  accuracy on the originals (gold label) / on the perturbed texts (the
                          expected label: gold for INV, the known new label for DIR)
  flip_rate               share whose predicted label (gen: normalised answer) changed
  failure_rate            share that broke the expectation: INV a changed prediction, DIR a
                          prediction other than the expected label
  label_loyalty           1 - flip_rate (Xu et al. 2021)
  probability_loyalty     mean change of the expected label's probability, after minus before
                          (INV: the gold label's; negative = the model lost confidence); cls only
"""

from __future__ import annotations

import difflib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmreason.errors import UserError
from lmreason.evaluation.perturb import DIR, INV, Perturbation, word
from lmreason.evaluation.perturb.suites import SUITES as KNOWN_SUITES
from lmreason.evaluation.perturb.suites import SuiteSettings, is_uncased
from lmreason.evaluation.perturb.suites import build_tests as suite_tests

KNOWN_ATTACKS = ("greedy",)


# ------------------------------------------------------------------ config
def check_config(rcfg, task_name: str | None = None) -> None:
    """Bad settings as one line, before any model is loaded.

    Raises:
        UserError: unknown suite or attack, a budget or rate out of range, an attack on task=gen.
    """
    unknown = [s for s in rcfg.suites if s not in KNOWN_SUITES]
    if unknown:
        raise UserError(
            f"diagnostics.robustness.suites: unknown suite {unknown[0]!r}; known suites: {', '.join(KNOWN_SUITES)}"
        )
    if not rcfg.suites and not rcfg.attack:
        raise UserError(
            "diagnostics.robustness.suites is empty and no attack is set: "
            "give suites=[character,word,reasoning] or attack=greedy"
        )
    if rcfg.examples is None or rcfg.examples <= 0:
        raise UserError(
            f"diagnostics.robustness.examples={rcfg.examples}: must be > 0 (examples per split tried by each suite)"
        )
    if not 0 < rcfg.meaning_threshold <= 1:
        raise UserError(f"diagnostics.robustness.meaning_threshold={rcfg.meaning_threshold}: must be in (0, 1]")
    for key in ("character.rate", "word.rate", "max_changed_share"):
        value = (
            rcfg.character.rate
            if key == "character.rate"
            else rcfg.word.rate
            if key == "word.rate"
            else rcfg.max_changed_share
        )
        if not 0 < value <= 1:
            raise UserError(f"diagnostics.robustness.{key}={value}: must be in (0, 1]")
    unknown_sources = [s for s in rcfg.word.sources if s not in ("embedding", "wordnet")]
    if unknown_sources:
        raise UserError(
            f"diagnostics.robustness.word.sources: unknown source {unknown_sources[0]!r}; known: embedding, wordnet"
        )
    if rcfg.attack is not None:
        if rcfg.attack not in KNOWN_ATTACKS:
            raise UserError(
                f"diagnostics.robustness.attack={rcfg.attack}: unknown attack; "
                f"known: {', '.join(KNOWN_ATTACKS)} (or null)"
            )
        if task_name == "gen":
            raise UserError(
                "diagnostics.robustness.attack=greedy needs a classifier (task=cls): it attacks class probabilities; "
                "unset the attack for a task=gen model"
            )
        if rcfg.query_budget is None or rcfg.query_budget <= 0:
            raise UserError(
                f"diagnostics.robustness.query_budget={rcfg.query_budget}: "
                "must be > 0 (model calls per attacked example)"
            )
        if rcfg.attack_examples is not None and rcfg.attack_examples <= 0:
            raise UserError(
                f"diagnostics.robustness.attack_examples={rcfg.attack_examples}: "
                "must be > 0 (or null: as many as examples)"
            )


# ------------------------------------------------------------------ tests of the suites
def build_tests(rcfg, label_names: list[str], synonyms=None, uncased: bool = False) -> list[Perturbation]:
    """The tests of the configured suites, in suite order (perturb.suites.build_tests with `rcfg`'s rates)."""
    settings = SuiteSettings(
        character_rate=float(rcfg.character.rate),
        punctuation_rate=float(rcfg.character.punctuation_rate),
        word_rate=float(rcfg.word.rate),
        meaning_threshold=float(rcfg.meaning_threshold),
    )
    return suite_tests(rcfg.suites, label_names, settings, synonyms, uncased)


def example_rng(seed: int, key: str, index: int) -> random.Random:
    """One generator per (seed, test, row): a test's output for a row does not depend on the other rows or tests."""
    return random.Random(f"{seed}:{key}:{index}")


@dataclass
class Applied:
    """A test applied to the sample: the positions it applied to and their perturbed texts."""

    test: Perturbation
    rows: list[int]  # positions in the sample
    texts: list[str]
    expected: list[Any]  # expected label name per row (gold for INV)
    candidates: int = 0  # word suite: candidate sentences built
    rejected: int = 0  # word suite: candidates the meaning check rejected


def apply_tests(
    tests, texts: list[str], sample_index: list[int], gold_names: list[str], seed: int, meaning=None, tries: int = 1
) -> list[Applied]:
    """Each test on each sampled text; the word suite's candidates pass the meaning check in one batch."""
    applied = []
    for test in tests:
        rows, outs, expected = [], [], []
        pending = []  # word suite: (row, [candidates])
        for pos, (text, index) in enumerate(zip(texts, sample_index)):
            want = gold_names[pos] if test.expectation == INV else test.expected_label(gold_names[pos])
            if want is None:
                continue
            if test.suite == "word":
                found = []
                for attempt in range(max(1, tries)):
                    out, ok = test.apply(text, example_rng(seed, f"{test.key}#{attempt}", index))
                    if ok and out not in found:
                        found.append(out)
                if found:
                    pending.append((pos, found, want))
                continue
            out, ok = test.apply(text, example_rng(seed, test.key, index))
            if ok:
                rows.append(pos)
                outs.append(out)
                expected.append(want)
        item = Applied(test, rows, outs, expected)
        if pending:
            originals = [texts[pos] for pos, found, _ in pending for _ in found]
            candidates = [c for _, found, _ in pending for c in found]
            keep = iter(meaning.accept(originals, candidates))
            item.candidates = len(candidates)
            for pos, found, want in pending:
                verdicts = [bool(next(keep)) for _ in found]
                item.rejected += verdicts.count(False)
                if any(verdicts):
                    item.rows.append(pos)
                    item.texts.append(found[verdicts.index(True)])
                    item.expected.append(want)
        applied.append(item)
    return applied


# ------------------------------------------------------------------ shared resources
class Resources:
    """The sentence encoder (meaning check) and the synonym sources, loaded once and only when needed."""

    def __init__(self, rcfg, device, cache_dir=None, encoder=None):
        self.rcfg, self.device, self.cache_dir = rcfg, device, cache_dir
        self._encoder = encoder
        self._synonyms = None
        self.notes: list[str] = []

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = word.SentenceEncoder.load(self.rcfg.encoder, self.device, self.cache_dir)
        return self._encoder

    @property
    def meaning(self):
        return word.MeaningCheck(self.encoder, float(self.rcfg.meaning_threshold))

    @property
    def synonyms(self):
        if self._synonyms is None:
            self._synonyms, notes = word.build_synonyms(
                self.rcfg.word.sources,
                lambda: self.encoder,
                k=int(self.rcfg.word.neighbours),
                min_similarity=float(self.rcfg.word.min_neighbour_similarity),
            )
            self.notes += notes
        return self._synonyms


# ------------------------------------------------------------------ one split
def sample_rows(n: int, budget: int, seed: int) -> list[int]:
    """A seeded sample of min(budget, n) row indices, in split order."""
    if budget >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=budget, replace=False).tolist())


def robustness_of_split(session, task, request, rcfg, resources: Resources) -> tuple[dict, list[dict]]:
    """(the robustness.json payload, the flipped records) of one split."""
    if task.name == "gen":
        return _gen_split(session, task, request, rcfg, resources)
    return _cls_split(session, request, rcfg, resources)


def _perturb(session, rcfg, resources: Resources, synonyms, label_names: list[str], rows: tuple):
    """(tests, what each applied to) for `rows` = (texts, their split indices, gold label names): the
    synonym table filled for the texts' content words first, then every test run, seeded."""
    texts, index, gold_names = rows
    if synonyms is not None:
        synonyms.prefetch(m.group() for t in texts for m in word.content_words(t))
    tests = build_tests(rcfg, label_names, synonyms, uncased=is_uncased(session.tokenizer))
    meaning = resources.meaning if "word" in rcfg.suites else None
    applied = apply_tests(tests, texts, index, gold_names, int(rcfg.seed), meaning, int(rcfg.word.tries))
    return tests, applied


def _needs_synonyms(rcfg) -> bool:
    return "word" in rcfg.suites or rcfg.attack is not None


def _cls_split(session, request, rcfg, resources: Resources) -> tuple[dict, list[dict]]:
    from lmreason.evaluation.loading import label_names_of
    from lmreason.evaluation.predict import classify_texts

    dataset = request.dataset
    model_labels = label_names_of(session.model)
    index = sample_rows(len(dataset), int(rcfg.examples), int(rcfg.seed))
    sample = dataset.select(index)  # a column of a datasets.Dataset is read whole: read the sample's once
    texts = list(sample["text"])
    pairs = list(sample["text_pair"]) if "text_pair" in sample.column_names else None
    gold_names = [request.label_names[label] for label in sample["labels"]]
    gold = np.array([model_labels.index(g) for g in gold_names])
    synonyms = resources.synonyms if _needs_synonyms(rcfg) else None
    tests, applied = _perturb(session, rcfg, resources, synonyms, model_labels, (texts, index, gold_names))
    # the clean texts and every test's perturbed texts in one batched pass
    all_texts = texts + [t for a in applied for t in a.texts]
    all_pairs = (pairs + [pairs[r] for a in applied for r in a.rows]) if pairs else None
    probs = classify_texts(session, all_texts, all_pairs)
    clean, at = probs[: len(texts)], len(texts)
    before = clean.argmax(axis=1)
    figures, records = {}, []
    for a in applied:
        after_probs = probs[at : at + len(a.rows)]
        at += len(a.rows)
        figures[a.test.key] = _cls_figures(a, clean, after_probs, gold, model_labels, len(texts))
        for k, pos in enumerate(a.rows):
            want = model_labels.index(a.expected[k]) if a.expected[k] in model_labels else -1
            after = int(after_probs[k].argmax())
            broke = after != before[pos] if a.test.expectation == INV else after != want
            if broke:
                records.append(
                    {
                        "suite": a.test.key,
                        "expectation": a.test.expectation,
                        "original": texts[pos],
                        "perturbed": a.texts[k],
                        "gold": gold_names[pos],
                        "expected": a.expected[k],
                        "predicted_before": model_labels[before[pos]],
                        "confidence_before": float(clean[pos, before[pos]]),
                        "predicted_after": model_labels[after],
                        "confidence_after": float(after_probs[k, after]),
                    }
                )
    payload = {
        "split": request.name,
        "task": "cls",
        "examples": len(texts),
        "seed": int(rcfg.seed),
        "clean_acc": float((before == gold).mean()) if len(texts) else None,
        "tests": figures,
    }
    if rcfg.attack:
        from lmreason.evaluation.attack import AttackSettings, greedy_attack

        n_attack = int(rcfg.attack_examples or rcfg.examples)
        keep = list(range(min(n_attack, len(texts))))
        attack, attacked = greedy_attack(
            session,
            [texts[i] for i in keep],
            [pairs[i] for i in keep] if pairs else None,
            gold[keep],
            clean[keep],
            AttackSettings(
                synonyms,
                resources.meaning,
                budget=int(rcfg.query_budget),
                max_changed_share=float(rcfg.max_changed_share),
            ),
        )
        attack["name"] = rcfg.attack
        payload["attack"] = attack
        for rec in attacked:
            if rec["success"]:
                pos, after = keep[rec["index"]], rec["probs"]
                records.append(
                    {
                        "suite": f"attack/{rcfg.attack}",
                        "expectation": INV,
                        "original": rec["original"],
                        "perturbed": rec["perturbed"],
                        "gold": gold_names[pos],
                        "expected": gold_names[pos],
                        "predicted_before": model_labels[before[pos]],
                        "confidence_before": float(clean[pos, before[pos]]),
                        "predicted_after": model_labels[int(after.argmax())],
                        "confidence_after": float(after.max()),
                        "queries": rec["queries"],
                        "words_changed": rec["words_changed"],
                    }
                )
    payload["synonyms"] = _synonyms_info(synonyms)
    return payload, records


def _synonyms_info(synonyms) -> dict | None:
    """Which synonym sources ran, and how many (word, opposite) pairs they offered that were held back."""
    if synonyms is None:
        return None
    return {"sources": [source.name for source in synonyms.sources], "opposites_held_back": synonyms.antonyms_dropped}


def _cls_figures(a: Applied, clean, after_probs, gold, model_labels, tried: int) -> dict:
    rows = np.array(a.rows, dtype=np.int64)
    out = {
        "suite": a.test.suite,
        "test": a.test.name,
        "expectation": a.test.expectation,
        "about": a.test.about,
        "tried": tried,
        "applicable": len(rows),
    }
    if a.test.suite == "word":
        out.update(meaning_candidates=a.candidates, meaning_rejected=a.rejected)
    if not len(rows):
        out.update(
            acc_before=None,
            acc_after=None,
            flip_rate=None,
            failure_rate=None,
            label_loyalty=None,
            probability_loyalty=None,
        )
        return out
    want = np.array([model_labels.index(e) if e in model_labels else -1 for e in a.expected])
    before, after = clean[rows].argmax(axis=1), after_probs.argmax(axis=1)
    flips = after != before
    fail = flips if a.test.expectation == INV else after != want
    p_before = clean[rows, gold[rows]]
    p_after = np.where(want >= 0, after_probs[np.arange(len(rows)), np.maximum(want, 0)], 0.0)
    out.update(
        acc_before=float((before == gold[rows]).mean()),
        acc_after=float((after == want).mean()),
        flip_rate=float(flips.mean()),
        failure_rate=float(fail.mean()),
        label_loyalty=float(1 - flips.mean()),
        probability_loyalty=float((p_after - p_before).mean()),
    )
    return out


def _gen_split(session, task, request, rcfg, resources: Resources) -> tuple[dict, list[dict]]:
    """task=gen: the suites on the prompt; answers generated and scored with the task's scorer."""
    import json

    from lmreason.evaluation.generation import generate_texts
    from lmreason.evaluation.scoring import normalize_answer, score_rows

    dataset = request.dataset
    index = sample_rows(len(dataset), int(rcfg.examples), int(rcfg.seed))
    sample = dataset.select(index)
    columns = {
        c: list(sample[c])
        for c in sample.column_names
        if c in ("task", "entry", "generator_config", "prompt", "answer", "completion")
    }
    prompts = columns["prompt"]
    gold_names = [str(a) for a in columns.get("answer", columns["completion"])]
    synonyms = resources.synonyms if "word" in rcfg.suites else None
    tests, applied = _perturb(session, rcfg, resources, synonyms, [], (prompts, index, gold_names))
    all_prompts = prompts + [t for a in applied for t in a.texts]
    ids = task.encode_prompts(session.tokenizer, all_prompts, session.max_length)
    answers, _ = generate_texts(
        session.model, session.tokenizer, ids, session.generation, session.device, session.precision
    )
    clean_scores = score_rows(_Columns(columns), answers[: len(prompts)])
    figures, records, at = {}, [], len(prompts)
    for a in applied:
        outs = answers[at : at + len(a.rows)]
        at += len(a.rows)
        cols = {c: [v[r] for r in a.rows] for c, v in columns.items()}
        cols["prompt"] = list(a.texts)
        if a.test.expectation == DIR:  # the expected answer changes: score against it
            for c in ("answer", "completion"):
                if c in cols:
                    cols[c] = list(a.expected)
            if "entry" in cols:
                cols["entry"] = [
                    json.dumps({**json.loads(e), "question": q, "answer": want}) if e else e
                    for e, q, want in zip(cols["entry"], a.texts, a.expected)
                ]
        scores = score_rows(_Columns(cols), outs) if a.rows else np.zeros(0)
        before = clean_scores[a.rows] if a.rows else np.zeros(0)
        changed = np.array(
            [normalize_answer(o) != normalize_answer(answers[r]) for o, r in zip(outs, a.rows)], dtype=bool
        )
        fail = changed if a.test.expectation == INV else scores < 1.0
        entry = {
            "suite": a.test.suite,
            "test": a.test.name,
            "expectation": a.test.expectation,
            "about": a.test.about,
            "tried": len(prompts),
            "applicable": len(a.rows),
        }
        if a.test.suite == "word":
            entry.update(meaning_candidates=a.candidates, meaning_rejected=a.rejected)
        if a.rows:
            entry.update(
                acc_before=float((before >= 1).mean()),
                acc_after=float((scores >= 1).mean()),
                score_before=float(before.mean()),
                score_after=float(scores.mean()),
                flip_rate=float(changed.mean()),
                failure_rate=float(fail.mean()),
                label_loyalty=float(1 - changed.mean()),
                probability_loyalty=None,
            )
        else:
            entry.update(
                acc_before=None,
                acc_after=None,
                flip_rate=None,
                failure_rate=None,
                label_loyalty=None,
                probability_loyalty=None,
            )
        figures[a.test.key] = entry
        for k, r in enumerate(a.rows):
            if fail[k]:
                records.append(
                    {
                        "suite": a.test.key,
                        "expectation": a.test.expectation,
                        "original": prompts[r],
                        "perturbed": a.texts[k],
                        "gold": gold_names[r],
                        "expected": a.expected[k],
                        "predicted_before": answers[r],
                        "score_before": float(clean_scores[r]),
                        "predicted_after": outs[k],
                        "score_after": float(scores[k]),
                    }
                )
    payload = {
        "split": request.name,
        "task": "gen",
        "examples": len(prompts),
        "seed": int(rcfg.seed),
        "clean_acc": float((clean_scores >= 1).mean()) if len(prompts) else None,
        "clean_score": float(clean_scores.mean()) if len(prompts) else None,
        "tests": figures,
        "synonyms": _synonyms_info(synonyms),
    }
    return payload, records


class _Columns:
    """The two things `score_rows` reads of a dataset: column names and whole columns."""

    def __init__(self, columns: dict):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, name):
        return self.columns[name]


# ------------------------------------------------------------------ all splits
def run_robustness(session, task, requests, rcfg, run_dir: Path | None = None, cache_dir=None, resources=None) -> dict:
    """Robustness of every requested split: files, one terminal table, TensorBoard; returns {split: payload}."""
    from lmreason.evaluation.outputs import write_json, write_jsonl
    from lmreason.ui import console

    check_config(rcfg, task.name)
    resources = resources or Resources(rcfg, session.device, cache_dir)
    results, flipped = {}, {}
    for request in requests:
        payload, records = robustness_of_split(session, task, request, rcfg, resources)
        skipped = [k for k, f in payload["tests"].items() if not f["applicable"]]
        payload["skipped"] = skipped
        results[request.name], flipped[request.name] = payload, records
        write_json(request.out_dir / "robustness.json", payload)
        write_jsonl(request.out_dir / "robustness.jsonl", records)
    if "character" in rcfg.suites and is_uncased(session.tokenizer):
        resources.notes.append(
            "robustness: character/case skipped: the model's tokenizer is uncased (case changes are invisible to it)"
        )
    for note in resources.notes:
        console.print(note)
    _print_skipped(results, console)
    console.print(robustness_table(results))
    for split, payload in results.items():
        if payload.get("attack"):
            a = payload["attack"]
            console.print(
                f"attack {a['name']} ({split}): {a['attacked']} attacked, success rate {_pct(a['success_rate'])}, "
                f"words changed {_pct(a['mean_words_changed'])}, queries {a['mean_queries'] or 0:.1f} per example"
            )
    shown = worst_flipped(results, flipped, int(rcfg.flipped_shown))
    for split, rec in shown:
        expected = "" if rec["expected"] == rec["gold"] else f", expected {rec['expected']}"
        console.print(
            f"[bold]{rec['suite']}[/] ({split}): gold {rec['gold']}{expected}; predicted {rec['predicted_before']} -> "
            f"{rec['predicted_after']}\n  {highlight_changes(rec['original'], rec['perturbed'])}"
        )
    if run_dir is not None:
        from lmreason.evaluation.outputs import head_prefix

        log_robustness(run_dir, results, head_prefix(run_dir, requests[0].out_dir.parent))
    return results


def _print_skipped(results: dict, console) -> None:
    """One line per suite (or test) that applied to no example of any split."""
    by_suite: dict[str, dict[str, int]] = {}
    for payload in results.values():
        for key, f in payload["tests"].items():
            tests = by_suite.setdefault(f["suite"], {})
            tests[key] = tests.get(key, 0) + f["applicable"]
    for suite, tests in by_suite.items():
        if not any(tests.values()):
            console.print(
                f"robustness: suite {suite} does not apply to this data (no example it could perturb); skipped"
            )
            continue
        for key, count in tests.items():
            if not count:
                console.print(f"robustness: {key} does not apply to this data; skipped")


def robustness_table(results: dict):
    """Tests x splits: applicable, accuracy before -> after, failure rate; the worst tests first."""
    from rich.table import Table

    splits = list(results)
    keys = [
        k
        for k in dict.fromkeys(k for p in results.values() for k in p["tests"])
        if any(p["tests"].get(k, {}).get("applicable") for p in results.values())
    ]  # skipped ones said so in a line
    worst = {k: max((results[s]["tests"].get(k, {}).get("failure_rate") or 0.0) for s in splits) for k in keys}
    table = Table(
        title="robustness (worst first)",
        title_justify="left",
        caption_justify="left",
        caption="failure: INV = prediction changed, DIR = not the expected label; "
        "acc over the examples a test applied to",
    )
    table.add_column("test", style="bold")
    table.add_column("exp")
    for split in splits:
        table.add_column(f"{split} n", justify="right")
        table.add_column(f"{split} acc", justify="right")
        table.add_column(f"{split} failure", justify="right")

    def fmt(v):
        return "—" if v is None else f"{v:.3f}"

    for key in sorted(keys, key=lambda k: -worst[k]):
        cells = []
        expectation = next(results[s]["tests"][key]["expectation"] for s in splits if key in results[s]["tests"])
        for split in splits:
            f = results[split]["tests"].get(key)
            if f is None or not f["applicable"]:
                cells += ["0", "—", "—"]
                continue
            fail = f["failure_rate"]
            colour = "red" if fail and fail >= 0.1 else "yellow" if fail else "green"
            cells += [
                str(f["applicable"]),
                f"{fmt(f['acc_before'])} -> {fmt(f['acc_after'])}",
                f"[{colour}]{fmt(fail)}[/]",
            ]
        table.add_row(key, expectation, *cells)
    attacks = [(s, results[s]["attack"]) for s in splits if results[s].get("attack")]
    if attacks:
        table.add_section()
        cells = []
        for split in splits:
            a = results[split].get("attack")
            if not a:
                cells += ["—", "—", "—"]
                continue
            cells += [
                str(a["attacked"]),
                f"{fmt(a['clean_acc'])} -> {fmt(a['after_attack_acc'])}",
                f"success {fmt(a['success_rate'])}",
            ]
        table.add_row(f"attack/{attacks[0][1]['name']}", "INV", *cells)
    return table


def _pct(value) -> str:
    return "—" if value is None else f"{value:.1%}"


def worst_flipped(results: dict, flipped: dict, count: int) -> list[tuple[str, dict]]:
    """Up to `count` flipped records, from the worst tests first (highest failure rate), one per test in turn."""
    order = []
    for split, payload in results.items():
        for key, f in payload["tests"].items():
            if f.get("failure_rate"):
                order.append((f["failure_rate"], split, key))
        if payload.get("attack", {}).get("success_rate"):
            order.append((payload["attack"]["success_rate"], split, f"attack/{payload['attack']['name']}"))
    order.sort(key=lambda t: -t[0])
    shown = []
    for _, split, key in order:
        for rec in flipped[split]:
            if rec["suite"] == key:
                shown.append((split, rec))
                break
        if len(shown) >= count:
            break
    return shown


def highlight_changes(original: str, perturbed: str) -> str:
    """The perturbed text, by a word-level diff: removed words struck through, new ones in bold red (rich markup)."""
    from rich.markup import escape

    old, new = original.split(), perturbed.split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        removed, added = escape(" ".join(old[i1:i2])), escape(" ".join(new[j1:j2]))
        if op == "equal":
            out.append(added)
            continue
        if removed:
            out.append(f"[dim strike]{removed}[/]")
        if added:
            out.append(f"[bold red]{added}[/]")
    return " ".join(out)


def log_robustness(run_dir: Path, results: dict, prefix: str = "") -> None:
    """[<head>/]robust/<suite>/<test>/<split>/<figure> and [<head>/]robust/attack/<split>/<figure> scalars (step 0);
    `prefix`: outputs.head_prefix."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
    for split, payload in results.items():
        for key, f in payload["tests"].items():
            for figure in ("acc_before", "acc_after", "flip_rate", "failure_rate", "probability_loyalty"):
                if isinstance(f.get(figure), (int, float)):
                    writer.add_scalar(f"{prefix}robust/{key}/{split}/{figure}", f[figure], 0)
        for figure, value in payload.get("attack", {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(f"{prefix}robust/attack/{split}/{figure}", value, 0)
    writer.close()
