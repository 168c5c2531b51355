"""scripts/remedies.py: the table it writes means what it says (figures read from the runs' files, paired
differences against the same seed's baseline, an interval that excludes 0 only for a consistent difference)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def remedies():
    spec = importlib.util.spec_from_file_location("remedies_script", ROOT / "scripts" / "remedies.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def _fake_run(run_dir: Path, acc: float, flips: tuple[float, float], attack: float, ece: tuple[float, float]):
    (run_dir / "eval" / "test").mkdir(parents=True)
    (run_dir / "eval" / "ood").mkdir(parents=True)
    (run_dir / "eval" / "test" / "metrics.json").write_text(json.dumps({"acc": acc}))
    (run_dir / "eval" / "ood" / "metrics.json").write_text(json.dumps({"acc": acc - 0.3}))
    tests = {
        "a": {"expectation": "INV", "applicable": True, "flip_rate": flips[0]},
        "b": {"expectation": "INV", "applicable": True, "flip_rate": flips[1]},
        "c": {"expectation": "DIR", "applicable": True, "flip_rate": 0.9},  # not label-preserving: not in the mean
        "d": {"expectation": "INV", "applicable": False, "flip_rate": None},
    }
    (run_dir / "eval" / "test" / "robustness.json").write_text(
        json.dumps({"tests": tests, "attack": {"success_rate": attack}})
    )
    splits = {"test": {"ece_before": ece[0], "ece_after": ece[1]}, "ood": {"ece_before": 0.3, "ece_after": 0.2}}
    (run_dir / "eval" / "calibration.json").write_text(json.dumps({"temperature": 1.5, "splits": splits}))
    (run_dir / "metrics.json").write_text(json.dumps({"status": "completed", "wall_time_s": 100.0}))


def test_figures_come_from_the_run_files(remedies, tmp_path):
    _fake_run(tmp_path / "r", acc=0.9, flips=(0.1, 0.3), attack=0.4, ece=(0.05, 0.02))
    figures = remedies.run_figures(tmp_path / "r")
    assert figures["acc"] == 0.9 and figures["ood_acc"] == pytest.approx(0.6)
    assert figures["flip_rate"] == pytest.approx(0.2)  # the mean of the applicable INV tests only
    assert figures["attack_success"] == 0.4
    assert (figures["ece_before"], figures["ece_after"], figures["ood_ece_after"]) == (0.05, 0.02, 0.2)
    assert figures["train_s"] == 100.0


def test_missing_files_are_none_not_zero(remedies, tmp_path):
    (tmp_path / "r").mkdir()
    assert set(remedies.run_figures(tmp_path / "r").values()) == {None}


def test_paired_differences_and_which_are_real(remedies, tmp_path):
    out = tmp_path / "out"
    for seed, base_acc in enumerate((0.80, 0.85, 0.90)):
        _fake_run(out / "d" / "baseline" / f"seed{seed}", base_acc, (0.2, 0.2), 0.5, (0.05, 0.02))
        # consistently 5 points better; attack success noisy around the baseline's
        _fake_run(out / "d" / "fix" / f"seed{seed}", base_acc + 0.05, (0.2, 0.2), (0.3, 0.7, 0.5)[seed], (0.05, 0.02))
    table = remedies.summarise(remedies.collect(out, ["d"], ["baseline", "fix"], [0, 1, 2]))
    acc = table["d"]["fix"]["acc"]
    assert acc["diff"] == pytest.approx(0.05) and acc["real"] and acc["better"]
    assert acc["mean"] == pytest.approx(0.90) and acc["n"] == 3
    attack = table["d"]["fix"]["attack_success"]
    assert attack["diff"] == pytest.approx(0.0) and not attack["real"]
    assert attack["ci"][0] < 0 < attack["ci"][1]
    assert "diff" not in table["d"]["baseline"]["acc"]  # the baseline is not compared with itself
    text = remedies.markdown(table)
    assert "| fix |" in text and "**Δ +0.050" in text  # the real difference is bold, the noisy one is not
    assert "**Δ +0.000" not in text


def test_sst2_subset_keeps_dev_as_test_and_carves_validation_from_train(remedies, tmp_path):
    source = tmp_path / "sst2"
    source.mkdir()
    rows = "".join(f"sentence {i},{i % 2}\n" for i in range(50))
    (source / "train.csv").write_text("text,label\n" + rows)
    (source / "dev.csv").write_text("text,label\ndev one,1\n")
    target = remedies.sst2_subset(tmp_path / "out", source, 20, 10, seed=0)
    train = (target / "train.csv").read_text().splitlines()[1:]
    validation = (target / "validation.csv").read_text().splitlines()[1:]
    assert len(train) == 20 and len(validation) == 10 and not set(train) & set(validation)
    assert (target / "test.csv").read_text() == (source / "dev.csv").read_text()
    assert remedies.sst2_subset(tmp_path / "out", source, 20, 10, seed=0) == target  # kept, not redrawn


@pytest.mark.slow
def test_the_experiment_runs_end_to_end_and_resumes_without_retraining(remedies, tmp_path, capsys):
    """Two remedies, one seed, tiny model and data: every run is trained and evaluated through the CLI, the table
    is written, and a second call finds the finished runs and runs no command again."""
    args = ["--quick", "--model", "tiny-bert", "--datasets", "reasoning", "--remedies", "baseline,adversarial"]
    args += ["--seeds", "1", "--out", str(tmp_path)]
    assert remedies.main(args) == 0
    for remedy in ("baseline", "adversarial"):
        run = tmp_path / "reasoning" / remedy / "seed0"
        assert (run / "remedies_done.json").is_file() and (run / "eval" / "calibration.json").is_file()
    table = json.loads((tmp_path / "remedies.json").read_text())["reasoning"]
    assert table["adversarial"]["acc"]["n"] == 1 and "diff" in table["adversarial"]["acc"]
    assert "| adversarial |" in (tmp_path / "remedies.md").read_text()
    capsys.readouterr()
    assert remedies.main(args) == 0
    assert "$ lmreason" not in capsys.readouterr().out  # finished runs are kept, not redone
    with pytest.raises(SystemExit, match=r"regularization.adversarial.epsilon=0.5.*another --out"):
        remedies.main([*args, "--adversarial-epsilon", "0.5"])  # not mixed into the row trained at 0.1
