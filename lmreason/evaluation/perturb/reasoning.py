"""Reasoning perturbations for premises + question data, each correct for the formats it claims.

Recognised formats (`parse` returns None for anything else, and the perturbation does not apply):
- reasoning-gym `syllogism`: "Consider these statements:\\n1. ...\\n2. ...\\n\\nDoes it logically
  follow that:\\n<conclusion>?\\n(Answer Yes or No)". Terms are the plural nouns of the statements.
- reasoning-gym `family_relationships`: a story of units "A is married to B." (+ "They have a child
  called C." / "They have children called C, D and E.") then "\\n\\n" and the question.
- BIG-bench `logical_deduction_*`: a set-up sentence ("On a shelf, there are three books: ...")
  then order constraints, one sentence each.
- BIG-bench `formal_fallacies_syllogisms_negation` and `epistemic_reasoning`: arguments about
  named people; only the renaming applies (their premises have no fixed layout).

The INV perturbations keep the label by construction:
- `rename`: one term (syllogism: a plural noun, to a nonce word) or one person (to an unused name of
  the same gender: family_relationships answers are gendered words like mother-in-law) replaced at
  every occurrence, whole words only; nothing else changes. Not where a label names the term.
- `reorder`: the premises (story units, constraints) permuted; the question stays last.
- `distractor`: one premise about new terms or people inserted (a syllogism premise over two nonce
  terms; a couple unrelated to the family): it cannot make an invalid argument valid or the reverse.
The DIR perturbation `negate_conclusion` (syllogisms) replaces the conclusion by its contradictory
(All S are P <-> Some S are not P; No S are P <-> Some S are P). Where the premises entail the
conclusion they cannot entail its contradictory (two categorical premises over distinct term pairs
are always jointly satisfiable), so a "Yes" becomes "No". It applies only where a brute-force model
check (`follows`, Aristotelian semantics: every term non-empty) confirms the original conclusion
follows: reasoning-gym's rule-based labeller marks some invalid syllogisms "Yes" (e.g. "All A are B;
Some B are C => Some A are C", an undistributed middle), and negating those proves nothing.
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, field

NONCE_PLURALS = (
    "blickets",
    "daxes",
    "wugs",
    "feps",
    "zorbs",
    "glorps",
    "tovs",
    "morks",
    "snerps",
    "quibs",
    "fendles",
    "prets",
    "lorps",
    "vints",
)

SYLLOGISM = re.compile(
    r"^(?P<head>Consider these statements:\n)(?P<premises>(?:\d+\. [^\n]*\n)+)\n"
    r"(?P<ask>Does it logically follow that:\n)(?P<conclusion>[^\n]*)\?\n(?P<tail>\(Answer Yes or No\))\s*$"
)
STATEMENT = re.compile(r"^(All|No|Some) (\w+) are (not )?(\w+)$")
FAMILY_UNIT = re.compile(r"[A-Z][a-z]+ is married to [A-Z][a-z]+\.(?: They have (?:a child|children) called [^.]+\.)?")
DEDUCTION_SETUP = re.compile(r"^[^.]*\b(?:there (?:are|were)|sells) (?:three|four|five|six|seven) [^.:]+:[^.]*\.")


@dataclass
class Parsed:
    """A text split into what precedes the premises, the premises, and what follows them."""

    kind: str  # syllogism, family, deduction, argument
    head: str
    premises: list[str] = field(default_factory=list)
    tail: str = ""
    conclusion: str = ""  # syllogism only
    terms: list[str] = field(default_factory=list)  # renamable words, in order of first appearance

    def join(self, premises: list[str] | None = None, conclusion: str | None = None) -> str:
        premises = self.premises if premises is None else premises
        if self.kind == "syllogism":
            body = "".join(f"{i}. {p}\n" for i, p in enumerate(premises, 1))
            return (
                f"{self.head}{body}\nDoes it logically follow that:\n{conclusion or self.conclusion}?\n"
                "(Answer Yes or No)"
            )
        if self.kind == "family":
            return self.head + " ".join(premises) + self.tail
        return self.head + " " + " ".join(premises) + self.tail


@functools.lru_cache(maxsize=1)
def names_by_gender() -> dict[str, str]:
    """First name -> 'male'/'female', from reasoning-gym's family_relationships name lists."""
    try:
        from reasoning_gym.graphs.family_relationships import FamilyRelationshipsConfig
    except ImportError:  # reasoning-gym is a dependency; keep a working minimum anyway
        return {n: "male" for n in ("James", "John", "Robert")} | {n: "female" for n in ("Mary", "Linda", "Susan")}
    config = FamilyRelationshipsConfig()
    return {**{n: "male" for n in config.male_names}, **{n: "female" for n in config.female_names}}


def _names_in(text: str) -> list[str]:
    known = names_by_gender()
    return list(dict.fromkeys(w for w in re.findall(r"\b[A-Z][a-z]+\b", text) if w in known))


def parse(text: str) -> Parsed | None:
    """The premises structure of `text`, or None when it is not a recognised premises + question text."""
    m = SYLLOGISM.match(text)
    if m:
        premises = [line.split(". ", 1)[1] for line in m.group("premises").splitlines()]
        statements = [STATEMENT.match(p) for p in premises + [m.group("conclusion")]]
        if not all(statements):
            return None
        terms = list(dict.fromkeys(t for s in statements for t in (s.group(2), s.group(4))))
        return Parsed("syllogism", m.group("head"), premises, conclusion=m.group("conclusion"), terms=terms)
    story, sep, question = text.partition("\n\n")
    if sep and story:
        units = FAMILY_UNIT.findall(story)
        if units and " ".join(units) == story:
            return Parsed("family", "", units, tail=sep + question, terms=_names_in(text))
    if "deductively valid or invalid" in text or re.match(r"^Premise: .* Hypothesis: ", text, re.S):
        names = _names_in(text)
        return Parsed("argument", text, terms=names) if names else None
    m = DEDUCTION_SETUP.match(text)
    if m:
        sentences = re.findall(r"[^.]+\.", text[m.end() :])
        if (
            len(sentences) >= 2
            and "".join(sentences).strip()
            and " ".join(s.strip() for s in sentences) == text[m.end() :].strip()
        ):
            return Parsed("deduction", m.group(), [s.strip() for s in sentences])
    return None


def _replace_word(text: str, old: str, new: str) -> str:
    return re.sub(rf"\b{re.escape(old)}\b", new, text)


def rename(text: str, rng, label_names: tuple[str, ...] = ()) -> tuple[str, bool]:
    """One term or person renamed at every occurrence (see the module docstring)."""
    parsed = parse(text)
    if parsed is None or not parsed.terms:
        return text, False
    candidates = [t for t in parsed.terms if not any(re.search(rf"\b{re.escape(t)}\b", label) for label in label_names)]
    if not candidates:
        return text, False
    old = rng.choice(candidates)
    if parsed.kind == "syllogism":
        pool = [w for w in NONCE_PLURALS if not re.search(rf"\b{w}\b", text)]
    else:
        gender = names_by_gender()[old]
        pool = [n for n, g in names_by_gender().items() if g == gender and not re.search(rf"\b{n}\b", text)]
    if not pool:
        return text, False
    return _replace_word(text, old, rng.choice(pool)), True


def reorder(text: str, rng) -> tuple[str, bool]:
    """The premises in another order (never the same one)."""
    parsed = parse(text)
    if parsed is None or len(parsed.premises) < 2 or len(set(parsed.premises)) < 2:
        return text, False
    order = list(range(len(parsed.premises)))
    while order == sorted(order) or [parsed.premises[i] for i in order] == parsed.premises:
        rng.shuffle(order)
    return parsed.join([parsed.premises[i] for i in order]), True


QUANTIFIED = ("All {a} are {b}", "No {a} are {b}", "Some {a} are {b}", "Some {a} are not {b}")


def distractor(text: str, rng) -> tuple[str, bool]:
    """One irrelevant premise (about new terms or people) inserted among the premises."""
    parsed = parse(text)
    if parsed is None or parsed.kind not in ("syllogism", "family"):
        return text, False
    if parsed.kind == "syllogism":
        pool = [w for w in NONCE_PLURALS if not re.search(rf"\b{w}\b", text)]
        a, b = rng.sample(pool, 2)
        extra = rng.choice(QUANTIFIED).format(a=a, b=b)
    else:
        unused = {
            g: [n for n, gg in names_by_gender().items() if gg == g and not re.search(rf"\b{n}\b", text)]
            for g in ("male", "female")
        }
        husband, wife = rng.choice(unused["male"]), rng.choice(unused["female"])
        extra = f"{husband} is married to {wife}."
    premises = list(parsed.premises)
    premises.insert(rng.randrange(len(premises) + 1), extra)
    return parsed.join(premises), True


def contradictory(statement: str) -> str:
    """All S are P <-> Some S are not P; No S are P <-> Some S are P."""
    q, s, neg, p = STATEMENT.match(statement).groups()
    if q == "All":
        return f"Some {s} are not {p}"
    if q == "No":
        return f"Some {s} are {p}"
    return f"All {s} are {p}" if neg else f"No {s} are {p}"


def negate_conclusion(text: str, rng) -> tuple[str, bool]:
    """Syllogisms whose conclusion follows: the conclusion replaced by its contradictory (expected: No)."""
    parsed = parse(text)
    if parsed is None or parsed.kind != "syllogism":
        return text, False
    if not follows([parse_statement(p) for p in parsed.premises], parse_statement(parsed.conclusion)):
        return text, False
    return parsed.join(conclusion=contradictory(parsed.conclusion)), True


def negated_label(gold: str) -> str | None:
    """The label a negated conclusion must get: Yes -> No (a No stays unknown: not applicable)."""
    return "No" if gold.strip().lower() == "yes" else None


# ------------------------------------------------------------------ a small model checker
def parse_statement(statement: str) -> tuple[str, str, str]:
    """'Some A are not B' -> ('O', 'A', 'B'); A/E/I/O are the classical forms."""
    q, s, neg, p = STATEMENT.match(statement.strip()).groups()
    form = {"All": "A", "No": "E"}.get(q, "O" if neg else "I")
    return form, s, p


def _holds(form: str, s: str, p: str, model: list[frozenset]) -> bool:
    members = [t for t in model if s in t]
    if form == "A":
        return all(p in t for t in members)
    if form == "E":
        return not any(p in t for t in members)
    if form == "I":
        return any(p in t for t in members)
    return any(p not in t for t in members)


def follows(premises: list[tuple[str, str, str]], conclusion: tuple[str, str, str]) -> bool:
    """True when every model of the premises (all terms non-empty) satisfies the conclusion.

    A model is the set of non-empty regions of the Venn diagram of the terms: 2^(2^k) of them,
    so only for k <= 3 terms (a syllogism); more raises ValueError.
    """
    terms = sorted({x for statement in premises + [conclusion] for x in statement[1:]})
    if len(terms) > 3:
        raise ValueError(f"{len(terms)} terms: the brute-force check handles at most 3")
    regions = [frozenset(c) for r in range(len(terms) + 1) for c in itertools.combinations(terms, r)]
    for bits in range(1, 2 ** len(regions)):
        model = [region for i, region in enumerate(regions) if bits >> i & 1]
        if not all(any(term in region for region in model) for term in terms):
            continue  # existential import: every term has members
        if all(_holds(*p, model) for p in premises) and not _holds(*conclusion, model):
            return False
    return True
