"""augmentation=eda / perturb: each EDA operation does what it says, perturbed rows keep their label, only the
training split grows (nothing leaks into validation/test/OOD), the counts reported are the rows added, the cache
key follows the config, bad settings are one line before any data is read, and a finetune runs with it."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import (
    assert_one_line_error,
    compose_command,
    finetune_in_process,
    run_cli,
    run_command,
    write_split_dir,
)
from omegaconf import OmegaConf

from lmreason.data import eda
from lmreason.data.augment import AugmentContext, augment_train
from lmreason.errors import UserError
from lmreason.evaluation.perturb import reasoning

SYNONYMS = {"film": ["movie", "picture"], "great": ["superb"], "long": ["lengthy"], "story": ["tale"]}


def synonyms(word: str) -> list[str]:
    return SYNONYMS.get(word.lower(), [])


SENTENCE = "The film was great, and the story was long but never dull in any way at all."


def words(text: str) -> list[str]:
    return text.split()


# ------------------------------------------------------------------ the four EDA operations
def test_random_deletion_removes_words_and_keeps_the_order_of_the_rest():
    for seed in range(20):
        out, applied = eda.random_deletion(SENTENCE, random.Random(seed), 0.2)
        assert applied and 1 <= len(words(out)) < len(words(SENTENCE))
        rest = iter(words(SENTENCE))
        assert all(w in rest for w in words(out))  # a subsequence: only removals
    assert eda.random_deletion("alone", random.Random(0), 0.5) == ("alone", False)  # never all words
    assert eda.random_deletion("two words", random.Random(0), 1.0)[0] in ("two", "words")


def test_random_swap_keeps_the_multiset_of_words():
    for seed in range(20):
        out, applied = eda.random_swap(SENTENCE, random.Random(seed), 0.2)
        assert applied and out != SENTENCE
        assert Counter(words(out)) == Counter(words(SENTENCE))
    assert eda.random_swap("same same", random.Random(0), 0.5) == ("same same", False)


def test_random_insertion_adds_synonyms_of_words_of_the_sentence():
    n = eda.changed_words(len(words(SENTENCE)), 0.2)  # 17 words -> 3
    assert n == 3
    offered = {s for w in words(SENTENCE) for s in synonyms(w.strip(",."))}
    for seed in range(20):
        out, applied = eda.random_insertion(SENTENCE, random.Random(seed), 0.2, synonyms)
        assert applied and len(words(out)) == len(words(SENTENCE)) + n
        extra = Counter(words(out)) - Counter(words(SENTENCE))
        assert sum(extra.values()) == n and set(extra) <= offered
    assert eda.random_insertion("no known word here", random.Random(0), 0.5, synonyms)[1] is False


def test_synonym_replacement_changes_at_most_rate_of_the_words_to_their_synonyms():
    for rate in (0.1, 0.2, 0.5):
        bound = max(1, int(rate * len(words(SENTENCE))))
        for seed in range(20):
            out, applied = eda.synonym_replacement(SENTENCE, random.Random(seed), rate, synonyms)
            assert applied and len(words(out)) == len(words(SENTENCE))
            changed = [(a, b) for a, b in zip(words(SENTENCE), words(out)) if a != b]
            assert 1 <= len(changed) <= bound
            for old, new in changed:  # punctuation and case kept around a synonym of the word
                core_old, core_new = re.sub(r"\W", "", old), re.sub(r"\W", "", new)
                assert core_new.lower() in synonyms(core_old) and old.replace(core_old, core_new) == new
    assert eda.synonym_replacement(SENTENCE, random.Random(0), 0.0, synonyms) == (SENTENCE, False)


def test_edits_keep_the_spacing_between_words():
    text = "Consider these statements:\n1. All film are long\n2. No story is great"
    out, _ = eda.random_swap(text, random.Random(3), 0.1)
    assert out.count("\n") == 2 and Counter(words(out)) == Counter(words(text))


# ------------------------------------------------------------------ augment_train on frames
def _frames(train_texts, val_texts, labels=None):
    labels = labels or [str(i % 2) for i in range(len(train_texts))]
    return {
        "train": pd.DataFrame({"text": train_texts, "label": labels, "topic": ["a"] * len(train_texts)}),
        "validation": pd.DataFrame(
            {"text": val_texts, "label": ["0"] * len(val_texts), "topic": ["b"] * len(val_texts)}
        ),
    }


def _aug(**settings):
    """An augmentation config as composed (the common keys) with `settings` merged in."""
    from lmreason.config import AugmentationConfig, EdaConfig

    cfg = OmegaConf.structured(AugmentationConfig)
    cfg.eda = OmegaConf.structured(EdaConfig(synonym_replacement=0, random_insertion=0))  # no encoder needed
    return OmegaConf.merge(cfg, settings)


def test_same_seed_same_rows_and_augmented_rows_carry_their_source():
    texts = [f"row {i} says the film was rather good and quite long" for i in range(12)]
    frames = _frames(texts, ["something else entirely here"])
    first, report = augment_train(frames, _aug(copies=2, seed=3), AugmentContext("cls", ["0", "1"]))
    again, _ = augment_train(frames, _aug(copies=2, seed=3), AugmentContext("cls", ["0", "1"]))
    other, _ = augment_train(frames, _aug(copies=2, seed=4), AugmentContext("cls", ["0", "1"]))
    pd.testing.assert_frame_equal(first, again)
    assert list(first["text"]) != list(other["text"])
    originals, added = first[first.augmented_from == -1], first[first.augmented_from >= 0]
    assert list(originals["text"]) == texts and set(originals["augmented_by"]) == {""}
    assert len(added) == report["methods"]["eda"] == 24 - sum(report["dropped"].values())
    for row in added.itertuples():  # label and metadata are the source row's; the text is an edit of it
        source = frames["train"].iloc[row.augmented_from]
        assert (row.label, row.topic) == (source.label, source.topic) and row.text != source.text
        assert row.augmented_by in ("eda/random_swap", "eda/random_deletion")


def test_an_augmented_row_never_recreates_an_evaluation_text():
    # deleting one word of "good film" gives "good" or "film": both are validation texts, so both are dropped
    frames = _frames(["good film", "good film", "a fine long story told well"], ["good", "film"])
    frame, report = augment_train(frames, _aug(copies=3, eda={"random_swap": 0}), AugmentContext("cls", ["0", "1"]))
    assert not set(frame["text"][frame.augmented_from >= 0]) & {"good", "film"}
    assert report["dropped"]["equals_evaluation_example"] >= 2
    assert set(frame["augmented_from"][frame.augmented_from >= 0]) == {2}


def _syllogisms(n: int) -> pd.DataFrame:
    import reasoning_gym

    rows = list(reasoning_gym.create_dataset("syllogism", size=n, seed=5))
    return pd.DataFrame({"text": [r["question"] for r in rows], "label": [r["answer"] for r in rows]})


def _argument(text: str):
    parsed = reasoning.parse(text)
    return [reasoning.parse_statement(p) for p in parsed.premises], reasoning.parse_statement(parsed.conclusion)


def test_perturb_rows_keep_their_label_and_the_logic_that_decides_it():
    from lmreason.config import AugmentationConfig, PerturbAugmentationConfig

    train = _syllogisms(30)
    cfg = OmegaConf.merge(
        OmegaConf.structured(AugmentationConfig),
        {"copies": 2, "perturb": OmegaConf.structured(PerturbAugmentationConfig(suites=["reasoning"]))},
    )
    frame, report = augment_train(
        {"train": train, "validation": _syllogisms(3)}, cfg, AugmentContext("cls", ["No", "Yes"])
    )
    added = frame[frame.augmented_from >= 0]
    assert len(added) == report["methods"]["perturb"] > 30
    assert set(added["augmented_by"]) <= {
        "perturb/reasoning/rename",
        "perturb/reasoning/reorder",
        "perturb/reasoning/distractor",
    }
    assert "perturb/reasoning/negation" not in report["operations"]  # the DIR test changes the label: never used
    for row in added.itertuples():
        source = train.iloc[row.augmented_from]
        assert row.label == source.label
        premises, conclusion = _argument(row.text)
        original = _argument(source.text)
        if row.augmented_by.endswith("distractor"):  # the inserted premise is about two new terms: leave it out
            terms = {t for s in original[0] + [original[1]] for t in s[1:]}
            premises = [p for p in premises if set(p[1:]) <= terms]
        if row.augmented_by.endswith("reorder") or row.augmented_by.endswith("distractor"):
            assert sorted(premises) == sorted(original[0]) and conclusion == original[1]
        # whatever the test, the conclusion follows from the premises exactly when it did before
        assert reasoning.follows(premises, conclusion) == reasoning.follows(*original)


def test_gen_prompts_are_perturbed_and_the_completion_is_kept():
    from lmreason.config import AugmentationConfig, PerturbAugmentationConfig

    prompt = "Mary is married to John. They have a child called Linda.\n\nWhat is Mary to Linda?"
    asks_a_name = prompt.replace("What is Mary to Linda?", "Who is the mother of Linda?")
    train = pd.DataFrame({"prompt": [prompt, asks_a_name], "completion": ["mother", "Mary"]})
    cfg = OmegaConf.merge(
        OmegaConf.structured(AugmentationConfig),
        {"copies": 3, "perturb": OmegaConf.structured(PerturbAugmentationConfig(suites=["reasoning/rename"]))},
    )
    frame, _ = augment_train({"train": train}, cfg, AugmentContext("gen"))
    added = frame[frame.augmented_from >= 0]
    assert len(added) > 0 and set(added["augmented_by"]) == {"perturb/reasoning/rename"}
    for row in added.itertuples():
        assert row.completion == train.completion[row.augmented_from] and row.prompt != prompt
        if row.completion == "Linda":  # a name the answer holds is never renamed
            assert "Linda" in row.prompt


# ------------------------------------------------------------------ prepare: counts, splits, cache key
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = write_split_dir(tmp_path_factory.mktemp("aug") / "sentiment")
    # a training text that also sits in validation: its augmented copies must stay in train
    train = pd.read_csv(root / "train.csv")
    val = pd.read_csv(root / "validation.csv")
    val.loc[0, "text"] = train.loc[0, "text"]
    val.to_csv(root / "validation.csv", index=False)
    return root


def _prepare(tmp_path, cache_dir, data_dir, *overrides):
    return run_command(
        "prepare",
        "model=tiny-bert",
        "data=local",
        f"data.path={data_dir}",
        "data.metadata_columns=[topic]",
        "augmentation.synonyms.sources=[embedding]",
        *overrides,
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )


def _load(summary):
    import datasets

    return datasets.load_from_disk(summary["cache"])


def test_only_train_grows_and_the_counts_are_the_rows_added(tmp_path, cache_dir, data_dir, capsys):
    plain = _load(_prepare(tmp_path, cache_dir, data_dir))
    summary = _prepare(tmp_path, cache_dir, data_dir, "augmentation=[eda,perturb]", "augmentation.copies=2")
    augmented = _load(summary)
    report = summary["augmentation"]
    for split in ("validation", "test", "ood"):  # untouched, unmarked
        assert augmented[split].to_dict() == plain[split].to_dict()
        assert "augmented_from" not in augmented[split].column_names
    train = augmented["train"].to_pandas()
    n = len(plain["train"])
    assert list(train["text"][:n]) == plain["train"]["text"] and (train["augmented_from"][:n] == -1).all()
    added = train[n:]
    assert (added["augmented_from"] >= 0).all() and len(train) == report["train_rows_after"]
    by_method = Counter(key.split("/", 1)[0] for key in added["augmented_by"])
    assert by_method == report["methods"] and by_method["eda"] > 0 and by_method["perturb"] > 0
    assert Counter(added["augmented_by"]) == report["operations"]
    assert sum(report["methods"].values()) == len(train) - n == summary["splits"]["train"]["rows"] - n
    # the training text shared with validation was augmented, and its copies are in train only
    shared = plain["train"]["text"][0]
    assert (added["augmented_from"] == 0).any()
    assert not set(added["text"]) & set(augmented["validation"]["text"])
    assert shared in augmented["validation"]["text"]
    # the same numbers in the cached summary and on the terminal
    meta = json.loads((Path(summary["cache"]) / "lmreason_meta.json").read_text())
    assert meta["summary"]["augmentation"] == report
    out = capsys.readouterr().out
    assert f"eda +{report['methods']['eda']}" in out and f"perturb +{report['methods']['perturb']}" in out
    assert "perturb/reasoning applied to no training row" in out  # sentiment data has no premises


def test_cache_key_follows_the_augmentation_config(tmp_path, cache_dir):
    from lmreason.data.prepare import prepare_fingerprint
    from lmreason.models.loading import load_tokenizer

    def compose(*overrides):
        return compose_command("prepare", ["model=tiny-bert", *overrides], tmp_path, cache_dir)

    tokenizer = load_tokenizer(compose().model, str(cache_dir))

    def key(*overrides):
        cfg = compose(*overrides)
        return cfg, prepare_fingerprint(cfg, "content", tokenizer)

    cfg, none = key()
    keys = {
        key(*o)[1]
        for o in (
            ["augmentation=eda"],
            ["augmentation=eda", "augmentation.copies=2"],
            ["augmentation=eda", "augmentation.seed=1"],
            ["augmentation=eda", "augmentation.eda.random_swap=0"],
            ["augmentation=perturb"],
            ["augmentation=[eda,perturb]"],
        )
    }
    assert len(keys) == 6 and none not in keys
    # no augmentation (or 0 copies) = the key evaluate rebuilds the data with (it has no augmentation group)
    assert key("augmentation=eda", "augmentation.copies=0")[1] == none
    as_evaluate_builds_it = OmegaConf.create({k: OmegaConf.to_container(cfg[k]) for k in ("model", "task", "data")})
    assert prepare_fingerprint(as_evaluate_builds_it, "content", tokenizer) == none


# ------------------------------------------------------------------ bad input, before any data is read
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["augmentation=eda", "augmentation.copies=-1"], "augmentation.copies=-1: must be >= 0"),
        (["augmentation=eda", "augmentation.rate=1.5"], r"augmentation.rate=1.5: must be in \[0, 1\]"),
        (["augmentation=perturb", "augmentation.rate=-0.1"], r"augmentation.rate=-0.1: must be in \[0, 1\]"),
        (["augmentation=perturb", "augmentation.perturb.suites=[typos]"], "unknown suite 'typos'; known suites: "),
        (["augmentation=perturb", "augmentation.perturb.suites=[reasoning/negation]"], "is a DIR test"),
        (["augmentation=eda", "augmentation.eda.random_swap=-1"], "must be >= 0"),
        (["augmentation=[eda]", "augmentation.synonyms.sources=[thesaurus]"], "unknown source 'thesaurus'"),
        (["augmentation=eda", "task=gen", "model=tiny-gpt"], "augmentation=eda with task=gen"),
    ],
)
def test_bad_settings_are_one_line_before_data_is_prepared(tmp_path, cache_dir, overrides, message):
    missing = tmp_path / "no-such-file.csv"  # the data would fail too: the augmentation check comes first
    with pytest.raises(UserError, match=message):
        run_command(
            "prepare", "model=tiny-bert", "data=local", f"data.path={missing}", *overrides,
            output_dir=tmp_path, cache_dir=cache_dir,
        )  # fmt: skip


def test_the_cli_prints_the_bad_copies_as_one_line(tmp_path, cache_dir):
    proc = run_cli(
        "prepare", "model=tiny-bert", "augmentation=eda", "augmentation.copies=-2", cache_dir=cache_dir,
        cwd=tmp_path, check=False,
    )  # fmt: skip
    assert_one_line_error(proc, "augmentation.copies=-2: must be >= 0")


# ------------------------------------------------------------------ end to end
def test_finetune_with_eda_trains_on_the_augmented_split_and_evaluate_is_unaffected(
    tmp_path, cache_dir, data_dir, capsys
):
    run_dir = tmp_path / "run"
    finetune_in_process(
        run_dir, cache_dir, "data=local", f"data.path={data_dir}", "augmentation=eda",
        "augmentation.synonyms.sources=[embedding]", "train.epochs=1",
    )  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] in ("completed", "early_stopped")
    banner = capsys.readouterr().out
    trained_on = int(re.search(r"data\s+\S+: ([\d,]+) train", banner).group(1).replace(",", ""))
    before, after = re.search(
        r"augmentation\s+eda \+\d+.*?train ([\d,]+)\s+->\s+([\d,]+)\s+rows", banner, re.S
    ).groups()
    assert trained_on == int(after.replace(",", "")) > int(before.replace(",", "")) == 192
    results = run_command("evaluate", f"run={run_dir}", output_dir=tmp_path / "eval", cache_dir=cache_dir)
    assert results["test"]["n"] == 48 and results["ood"]["n"] == 48  # the splits as written, augmentation or not
