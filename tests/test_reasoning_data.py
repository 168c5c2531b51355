"""Reasoning-gym splits: sizes, no leakage, determinism, harder ood, gen rows, scoring, clear errors."""

import json
import logging

import pytest
from omegaconf import OmegaConf

from lmreason.data.reasoning import difficulty_definition, generate_reasoning_splits, score_answer
from lmreason.errors import UserError

TASK = "family_relationships"
ID = {"min_family_size": 3, "max_family_size": 6}
OOD = {"min_family_size": 7, "max_family_size": 8}
SIZES = {"train": 200, "validation": 40, "test": 60, "ood": 50}


@pytest.fixture(scope="module")
def cls_splits():
    return generate_reasoning_splits(TASK, SIZES, 7, ID, OOD, mode="cls")


@pytest.fixture(scope="module")
def gen_splits():
    return generate_reasoning_splits("syllogism", {"train": 50, "test": 30}, 3, {}, None, mode="gen")


def test_splits_have_the_asked_sizes(cls_splits):
    assert {split: len(rows) for split, rows in cls_splits.items()} == SIZES


def test_zero_size_split_is_left_out():
    splits = generate_reasoning_splits(TASK, {"train": 20, "validation": 0, "test": 10, "ood": 0}, 1, ID, OOD)
    assert sorted(splits) == ["test", "train"]


def test_no_question_of_train_in_the_other_splits(cls_splits):
    train = {row["text"] for row in cls_splits["train"]}
    seen = set(train)
    for split in ("validation", "test", "ood"):
        texts = [row["text"] for row in cls_splits[split]]
        assert len(set(texts)) == len(texts), f"{split} repeats a question"
        assert not seen & set(texts), f"{split} shares questions with train or an earlier split"
        seen |= set(texts)


def test_dedup_draws_again_when_the_problem_space_is_small():
    # count_bits over 1..40 has 40 distinct questions: train takes many, test must still fill up.
    config = {"min_n": 1, "max_n": 40}
    splits = generate_reasoning_splits("count_bits", {"train": 40, "test": 8}, 0, config, None)
    assert len(splits["test"]) == 8
    assert not {r["text"] for r in splits["train"]} & {r["text"] for r in splits["test"]}


def test_same_seed_same_rows_other_seed_other_rows(cls_splits):
    again = generate_reasoning_splits(TASK, SIZES, 7, ID, OOD, mode="cls")
    assert again == cls_splits
    other = generate_reasoning_splits(TASK, SIZES, 8, ID, OOD, mode="cls")
    assert [r["text"] for r in other["train"]] != [r["text"] for r in cls_splits["train"]]


def test_ood_comes_from_the_harder_config(cls_splits):
    for split in ("train", "validation", "test"):
        for row in cls_splits[split]:
            assert row["distribution"] == "id"
            assert (row["cfg_family_size_min"], row["cfg_family_size_max"]) == (3, 6)
            assert 3 <= row["difficulty"] == row["meta_family_size"] <= 6
    for row in cls_splits["ood"]:
        assert row["distribution"] == "ood"
        assert (row["cfg_family_size_min"], row["cfg_family_size_max"]) == (7, 8)
        assert 7 <= row["difficulty"] <= 8
    assert difficulty_definition(TASK) == "people in the family"


def test_cls_rows_are_flat_scalars_with_one_schema(cls_splits):
    keys = set(cls_splits["train"][0])
    assert {"text", "label", "difficulty", "task", "distribution"} <= keys
    for rows in cls_splits.values():
        for row in rows:
            assert set(row) == keys
            assert all(isinstance(v, (str, int, float, bool)) for v in row.values())
    json.dumps(cls_splits)  # JSON friendly
    labels = {row["label"] for row in cls_splits["train"]}
    assert {"husband", "wife", "son"} <= labels


def test_omegaconf_inputs_are_accepted():
    sizes = OmegaConf.create({"train": 10, "test": 5})
    splits = generate_reasoning_splits(TASK, sizes, 1, OmegaConf.create(ID), None)
    assert len(splits["test"]) == 5


def test_gen_rows_have_prompt_completion_and_entry(gen_splits):
    row = gen_splits["test"][0]
    assert row["completion"] == row["answer"] in ("Yes", "No")
    assert row["prompt"].startswith("Consider these statements")
    entry = json.loads(row["entry"])
    assert entry["question"] == row["prompt"] and entry["answer"] == row["answer"]
    assert json.loads(row["generator_config"]) == {}
    keys = set(row)
    assert all(set(r) == keys for rows in gen_splits.values() for r in rows)
    assert "difficulty" not in keys  # syllogism has no difficulty knob


def test_score_answer_uses_the_task_scorer(gen_splits):
    for row in gen_splits["test"][:10]:
        assert score_answer("syllogism", row["answer"], row) == 1.0
        wrong = "No" if row["answer"] == "Yes" else "Yes"
        assert score_answer("syllogism", wrong, row) < 1.0
    fam = generate_reasoning_splits(TASK, {"test": 5}, 2, ID, None, mode="gen")["test"][0]
    assert score_answer(TASK, fam["answer"].upper() + " ", fam) == 1.0  # the task's scorer normalises case/space
    assert score_answer(TASK, "cousin", fam) == 0.0


def test_score_answer_on_a_cls_row(cls_splits):
    row = cls_splits["test"][0]
    assert score_answer(TASK, row["label"], row) == 1.0
    assert score_answer(TASK, "nobody", row) == 0.0


def test_ood_labels_unseen_in_train_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="lmreason.data.reasoning"):
        generate_reasoning_splits(
            TASK, {"train": 100, "ood": 100}, 0, ID, {"min_family_size": 11, "max_family_size": 12}
        )
    assert "never seen in train" in caplog.text


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"task": "family_relationship"}, "did you mean family_relationships"),
        ({"task": "nonsense_xyz"}, "not a reasoning-gym generator"),
        (
            {"id_config": {"max_familysize": 5}},
            "id_config.max_familysize: not a family_relationships setting; did you mean 'max_family_size'? "
            "valid settings: min_family_size, max_family_size",
        ),
        ({"ood_config": {"colour": 1}}, "ood_config.colour"),
        ({"id_config": {"seed": 3}}, "data.seed"),
        ({"id_config": {"min_family_size": 1}}, "min_family_size must be at least 3"),
        ({"sizes": {"train": 10, "tset": 5}}, "did you mean 'test'"),
        ({"sizes": {"train": -1}}, "sizes.train=-1 must be a whole number"),
        ({"sizes": {"train": 0, "ood": 0}}, "asks for no examples"),
        ({"mode": "regression"}, "mode='regression' is unknown"),
        ({"ood_config": dict(ID)}, "same family_relationships settings as id_config"),
        ({"sizes": {"train": 10, "test": 5}}, "ood_config is set but sizes has no 'ood'"),
        ({"task": "basic_arithmetic", "id_config": {}, "ood_config": None}, "use task=gen"),
        ({"task": "propositional_logic", "id_config": {}, "ood_config": None}, "no single reference answer"),
        ({"task": "count_bits", "id_config": {"min_n": 1, "max_n": 2}, "ood_config": None}, "nothing to classify"),
        (
            {
                "task": "count_bits",
                "id_config": {"min_n": 1, "max_n": 4},
                "ood_config": None,
                "sizes": {"train": 30, "test": 5},
            },
            "lower sizes.test",
        ),
    ],
)
def test_bad_input_raises_one_line_user_error(kwargs, expected):
    args = {
        "task": TASK,
        "sizes": {"train": 60, "test": 10, "ood": 10},
        "seed": 0,
        "id_config": ID,
        "ood_config": OOD,
        "mode": "cls",
    }
    args.update(kwargs)
    with pytest.raises(UserError) as info:
        generate_reasoning_splits(**args)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_score_answer_unknown_task():
    with pytest.raises(UserError, match="did you mean syllogism"):
        score_answer("sylogism", "Yes", {"prompt": "?", "answer": "Yes"})
