"""The tests of each perturbation suite, built from plain settings: one list for evaluation and training.

`diagnostics=[robustness]` (lmreason.evaluation.robustness) runs all of them, INV and DIR;
`augmentation=perturb` (lmreason.data.augment) reuses the INV ones to make training rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmreason.evaluation.perturb import DIR, INV, Perturbation, character, identity, reasoning, word

SUITES = ("character", "word", "reasoning", "identity")


@dataclass(frozen=True)
class SuiteSettings:
    character_rate: float = 0.1  # share of words (3+ letters) edited by the character tests
    punctuation_rate: float = 0.5  # share of commas dropped by the punctuation test
    word_rate: float = 0.2  # share of content words substituted by the synonym test
    meaning_threshold: float = 0.85  # named in the synonym test's description (the check itself runs batched)


def build_tests(
    suites, label_names, settings: SuiteSettings, synonyms=None, uncased: bool = False
) -> list[Perturbation]:
    """The tests of `suites`, in suite order. `synonyms`: the word suite's source (word -> candidates).

    `label_names`: the renamer never renames a term a label names. `uncased`: the model's tokenizer
    lower-cases its input, so the case test would change nothing the model sees: left out.
    """
    rate, labels = float(settings.character_rate), tuple(label_names)
    punctuation_rate, word_rate = float(settings.punctuation_rate), float(settings.word_rate)
    tests: list[Perturbation] = []
    for suite in suites:
        if suite == "identity":
            tests.append(
                Perturbation("identity", "none", INV, identity, about="the text unchanged (flip rate must be 0)")
            )
        elif suite == "character":
            tests.append(
                Perturbation(
                    "character",
                    "typos",
                    INV,
                    lambda t, r: character.typos(t, r, rate),
                    about="DeepWordBug edits (keyboard neighbour, deletion, insertion, repetition, swap) "
                    f"on {rate:.0%} of words",
                )
            )
            if not uncased:
                tests.append(
                    Perturbation(
                        "character",
                        "case",
                        INV,
                        lambda t, r: character.change_case(t, r, rate),
                        about=f"upper/lower/capitalised forms of {rate:.0%} of words",
                    )
                )
            tests.append(
                Perturbation(
                    "character",
                    "punctuation",
                    INV,
                    lambda t, r: character.change_punctuation(t, r, punctuation_rate),
                    about="final punctuation dropped or added, commas dropped",
                )
            )
        elif suite == "word":
            tests.append(
                Perturbation(
                    "word",
                    "synonyms",
                    INV,
                    lambda t, r: word.substitute_synonyms(t, r, synonyms, word_rate),
                    about=f"{word_rate:.0%} of content words to synonyms, "
                    f"meaning check >= {settings.meaning_threshold}",
                )
            )
        elif suite == "reasoning":
            tests += [
                Perturbation(
                    "reasoning",
                    "rename",
                    INV,
                    lambda t, r: reasoning.rename(t, r, labels),
                    about="one term (nonce word) or person (same-gender name) renamed everywhere",
                ),
                Perturbation("reasoning", "reorder", INV, reasoning.reorder, about="premises in another order"),
                Perturbation(
                    "reasoning", "distractor", INV, reasoning.distractor, about="an irrelevant premise about new terms"
                ),
                Perturbation(
                    "reasoning",
                    "negation",
                    DIR,
                    reasoning.negate_conclusion,
                    expected_label=reasoning.negated_label,
                    about="syllogism conclusion replaced by its contradictory: Yes -> No",
                ),
            ]
    return tests


def is_uncased(tokenizer) -> bool:
    """True when the tokenizer lower-cases its input (all-MiniLM-L6-v2's does): case changes are invisible."""
    return tokenizer("Robust Cases")["input_ids"] == tokenizer("robust cases")["input_ids"]
