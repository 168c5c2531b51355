"""What the evaluation report says: slices shown once, what the OOD split is, runs that learned nothing."""

from __future__ import annotations

import json

import datasets
from omegaconf import OmegaConf

from lmreason.config import config_dir
from lmreason.data.sources import ood_description
from lmreason.evaluation.slices import slice_columns
from lmreason.evaluation.sweep import read_run


def test_columns_that_slice_alike_are_shown_once_under_difficulty():
    # chain_sum's `difficulty` is its number of terms: the two columns group the rows identically
    rows = datasets.Dataset.from_dict(
        {
            "meta_num_terms": [2, 3, 2, 3, 4],
            "difficulty": [2, 3, 2, 3, 4],
            "constant": [1] * 5,
            "kind": ["a", "a", "b", "b", "b"],
            "row_id": [0, 1, 2, 3, 4],
        }
    )
    chosen = slice_columns(None, ["meta_num_terms", "difficulty", "constant", "kind", "row_id"], rows)
    assert chosen == ["difficulty", "kind"]  # no twin, no one-value column, no per-row id
    assert slice_columns(["constant"], ["constant"], rows) == ["constant"]  # asked for: kept as asked


def test_ood_description_names_the_shift():
    demo = OmegaConf.load(f"{config_dir()}/data/reasoning.yaml")
    text = ood_description(OmegaConf.merge(demo, {"source": "reasoning"}))
    assert "inverted syllogisms" in text and "inversion_probability=1.0 (in distribution: 0.0)" in text
    assert "invalid_ratio" not in text  # the same in both: not a difference
    assert "ood.* file" in ood_description(OmegaConf.create({"source": "local", "path": "data/"}))


def _write_run(root, name, val_acc, majority, eval_acc=None):
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.json").write_text(
        json.dumps(
            {
                "status": "completed",
                "monitor": "val/acc",
                "mode": "max",
                "best_metric": val_acc,
                "val": {"val/acc": val_acc},
                "val_majority_baseline": majority,
            }
        )
    )
    if eval_acc is not None:
        (run / "eval" / "test").mkdir(parents=True)
        (run / "eval" / "test" / "metrics.json").write_text(
            json.dumps({"acc": eval_acc, "majority_baseline": majority})
        )
    return run


def test_sweep_report_flags_a_run_at_the_majority_baseline(tmp_path):
    stuck = read_run(_write_run(tmp_path, "0", val_acc=0.52, majority=0.52), tmp_path)
    learned = read_run(_write_run(tmp_path, "1", val_acc=0.91, majority=0.52, eval_acc=0.9), tmp_path)
    stuck_on_test = read_run(_write_run(tmp_path, "2", val_acc=0.7, majority=0.6, eval_acc=0.55), tmp_path)
    assert stuck["at_majority_baseline"] and "majority baseline (validation acc 0.520)" in stuck["note"]
    assert not learned["at_majority_baseline"] and learned["note"] == ""
    assert stuck_on_test["at_majority_baseline"] and "test acc 0.550" in stuck_on_test["note"]
