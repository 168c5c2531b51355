"""`diagnostics=[robustness,attribution]`: the robustness suites' flipped examples attributed before and after.

For each split, every record of eval/<split>/robustness.jsonl (an example whose prediction broke the test's
expectation) is attributed twice with the same settings: the original toward its prediction before, the
perturbed text toward its prediction after (task=gen: the log-probability of the answer text before / after,
as the tokenizer spells it; the generated ids are not kept by the suites). Written to
eval/<split>/flip_attributions.jsonl, summarised per test in eval/<split>/flip_attribution.json:
  changed_mass   share of the original's |attribution| on the words the perturbation changed or removed
  changed_share  share of the original's words it changed (what changed_mass would be if |scores| were uniform)
  top_changed    share of flips where the perturbation hit the original's most attributed word
changed_mass well above changed_share: the flips hit words the model leaned on.
Sentence-pair data is skipped (the suites' records keep only the perturbed first text).
"""

from __future__ import annotations

import difflib
import json

import numpy as np


def changed_words(before: list[str], after: list[str]) -> set[int]:
    """Indices of `before`'s words that a word-level diff does not find unchanged in `after`."""
    kept = set()
    for op, i1, i2, _, _ in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if op == "equal":
            kept.update(range(i1, i2))
    return set(range(len(before))) - kept


def _attribute_pairs(session, task, records: list[dict], acfg):
    """(attributions of the originals, of the perturbed texts)."""
    originals, perturbed = [r["original"] for r in records], [r["perturbed"] for r in records]
    if task.name == "gen":
        from lmreason.evaluation.gen_attribution import attribute_generation, reference_ids

        before = reference_ids(session.tokenizer, [r["predicted_before"] for r in records])
        after = reference_ids(session.tokenizer, [r["predicted_after"] for r in records])
        return (
            attribute_generation(session, task, originals, before, acfg),
            attribute_generation(session, task, perturbed, after, acfg),
        )
    from lmreason.evaluation.attribution import attribute
    from lmreason.evaluation.loading import label_names_of

    names = label_names_of(session.model)
    before = [names.index(r["predicted_before"]) for r in records]
    after = [names.index(r["predicted_after"]) for r in records]
    return (
        attribute(session, originals, None, acfg, targets=before),
        attribute(session, perturbed, None, acfg, targets=after),
    )


def flips_of_split(session, task, request, acfg) -> tuple[dict, list[dict]]:
    """(flip_attribution.json payload, flip_attributions.jsonl records) of one split."""
    path = request.out_dir / "robustness.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    if "text_pair" in request.dataset.column_names:
        return {"split": request.name, "flipped": len(records), "attributed": 0, "skipped": "sentence pairs"}, []
    if not records:
        return {"split": request.name, "flipped": 0, "attributed": 0, "tests": {}}, []
    before, after = _attribute_pairs(session, task, records, acfg)
    rows, per_test = [], {}
    for rec, a, b in zip(records, before, after):
        changed = changed_words([w.lower() for w in a.words], [w.lower() for w in b.words])
        mass = np.abs(np.asarray(a.scores))
        total = float(mass.sum())
        figures = {
            "changed_words": [a.words[j] for j in sorted(changed)],
            "changed_mass": float(mass[sorted(changed)].sum() / total) if total > 0 and changed else 0.0,
            "changed_share": len(changed) / max(len(a.words), 1),
            "top_changed": bool(a.words) and int(mass.argmax()) in changed,
        }
        rows.append(
            {
                "suite": rec["suite"],
                "original": rec["original"],
                "perturbed": rec["perturbed"],
                "before": a.as_record(),
                "after": b.as_record(),
                **figures,
            }
        )
        per_test.setdefault(rec["suite"], []).append(figures)
    tests = {
        key: {
            "flipped": len(items),
            **{f: float(np.mean([x[f] for x in items])) for f in ("changed_mass", "changed_share", "top_changed")},
        }
        for key, items in per_test.items()
    }
    return {"split": request.name, "flipped": len(records), "attributed": len(rows), "tests": tests}, rows


def attribute_flips(session, task, requests, acfg) -> dict:
    """Flip attributions of every split: files and one line per test on the terminal; returns {split: payload}."""
    from lmreason.evaluation.outputs import write_json, write_jsonl
    from lmreason.ui import console

    results = {}
    for request in requests:
        payload, rows = flips_of_split(session, task, request, acfg)
        write_jsonl(request.out_dir / "flip_attributions.jsonl", rows)
        write_json(request.out_dir / "flip_attribution.json", payload)
        results[request.name] = payload
        for key, t in payload.get("tests", {}).items():
            console.print(
                f"flipped {key} ({request.name}): {t['flipped']} attributed before/after; the perturbation changed "
                f"{t['changed_share']:.0%} of the words carrying {t['changed_mass']:.0%} of the attribution; "
                f"hit the top word in {t['top_changed']:.0%}"
            )
    return results
