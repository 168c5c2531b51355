"""The CPU fast paths: one switch, each checked against the unpatched computation, reported, undone when it fails."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import TINY_TRAIN, read_json, tiny_bert_classifier, write_sentiment_csv
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from lmreason.config import config_dir
from lmreason.models import fast_paths
from lmreason.models.fast_paths import CHECK_FAILED, NAMES, apply_fast_paths
from lmreason.training import dropout, embedding_grad


def classifier():
    return tiny_bert_classifier(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def layer_types(model) -> list[str]:
    return [type(m).__name__ for m in model.modules()]


# --------------------------------------------------------------------------- the mechanism, on a tiny model
def test_all_three_apply_to_a_bert_classifier_on_the_cpu_and_leave_rng_and_gradients_alone():
    model = classifier()
    rng = torch.get_rng_state()
    report = apply_fast_paths(model, "cpu", training=True)
    assert report.applied == list(NAMES) and report.skipped == {}
    assert torch.equal(torch.get_rng_state(), rng)  # the checks drew nothing from the training stream
    assert all(p.grad is None for p in model.parameters())  # nor left gradients behind
    assert model.training  # built in train mode, still in train mode
    assert type(model.get_input_embeddings()) is embedding_grad.RowGradEmbedding
    assert "FastDropout" in layer_types(model) and model.config._attn_implementation == dropout.ATTENTION
    assert report.as_dict() == {"applied": list(NAMES), "skipped": {}}
    assert report.describe() == "first_token_only, fast_dropout, row_gradient"


def test_switched_off_none_is_applied():
    model, reference = classifier(), classifier()
    report = apply_fast_paths(model, "cpu", enabled=False)
    assert report.applied == [] and report.skipped == {name: "device.fast_paths=false" for name in NAMES}
    assert layer_types(model) == layer_types(reference)
    assert model.config._attn_implementation == "sdpa"
    assert "forward" not in model.bert.encoder.layer[-1].__dict__


def test_inference_gets_only_the_first_token_layer_and_each_skip_says_why():
    report = apply_fast_paths(classifier(), "cpu", training=False)
    assert report.applied == ["first_token_only"]
    assert (
        report.describe()
        == "first_token_only; skipped: fast_dropout, row_gradient (training only: no dropout or gradients here)"
    )
    assert set(report.skipped) == {"fast_dropout", "row_gradient"} and "training only" in report.skipped["row_gradient"]
    # off the CPU, or under DDP, they do not apply (asked without running anything on a GPU)
    assert dropout.fast_dropout_unsupported(classifier(), "cuda").startswith("CPU only")
    assert embedding_grad.row_gradient_unsupported(classifier(), "cpu", world_size=2).startswith(
        "more than one process"
    )
    report = apply_fast_paths(classifier(), "cpu", world_size=2)
    assert report.applied == ["first_token_only", "fast_dropout"] and "DDP" in report.skipped["row_gradient"]


def test_a_gradient_that_differs_is_undone_with_one_warning(monkeypatch, caplog):
    real_add = embedding_grad.RowGradient.add
    monkeypatch.setattr(embedding_grad.RowGradient, "add", lambda self, ids, grad: real_add(self, ids, grad * 2))
    model = classifier()
    with caplog.at_level(logging.WARNING, logger=fast_paths.__name__):
        report = apply_fast_paths(model, "cpu")
    assert report.applied == ["first_token_only", "fast_dropout"]
    assert report.skipped["row_gradient"].startswith(CHECK_FAILED + ": the embedding gradient differs")
    assert type(model.get_input_embeddings()) is nn.Embedding
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage() and "row_gradient" in warnings[0].getMessage()


def test_missing_transformers_internals_fall_back_to_the_unpatched_model(monkeypatch, caplog):
    """As after a transformers upgrade that moved what is patched: the patch is undone, training goes on."""

    def moved():
        raise ImportError("cannot import name 'AttentionInterface' from 'transformers'")

    monkeypatch.setattr(dropout, "_register_attention", moved)
    model, reference = classifier(), classifier()
    with caplog.at_level(logging.WARNING, logger=fast_paths.__name__):
        report = apply_fast_paths(model, "cpu")
    assert "ImportError: cannot import name 'AttentionInterface'" in report.skipped["fast_dropout"]
    assert "FastDropout" not in layer_types(model) and model.config._attn_implementation == "sdpa"
    assert report.applied == ["first_token_only", "row_gradient"]
    assert sum(r.levelno == logging.WARNING for r in caplog.records) == 1
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.allclose(
            model(input_ids=ids, attention_mask=(ids != 0).long()).logits,
            reference(input_ids=ids, attention_mask=(ids != 0).long()).logits,
            atol=1e-5,
        )


def test_a_dropout_check_that_fails_is_undone(monkeypatch):
    monkeypatch.setattr(dropout, "keep_mask", lambda shape, p, device=None: torch.ones(shape, dtype=torch.bool))
    model = classifier()
    report = apply_fast_paths(model, "cpu")
    assert "keep_mask kept 1.0000 of elements" in report.skipped["fast_dropout"]
    assert "FastDropout" not in layer_types(model) and model.config._attn_implementation == "sdpa"


# --------------------------------------------------------------------------- the switch, end to end
def finetune(work: Path, cache_dir: Path, *overrides: str) -> dict:
    """`lmreason finetune` in this process: the real config, composed, run with output in `work/out`."""
    from lmreason.commands import finetune as command

    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        cfg = compose(
            config_name="finetune",
            overrides=[*TINY_TRAIN, *overrides, f"output_dir={work / 'out'}", f"cache_dir={cache_dir}"],
        )
    return command.run(cfg)


def test_fast_paths_off_trains_the_same_model_and_says_so(tmp_path, cache_dir, capsys):
    """Without dropout (whose fast mask draws another random stream) the paths are exact equivalents:
    [CLS]-only last layer, the embedding-gradient buffer and, on 2 threads, the batch shards give the weights
    of the unpatched run."""
    data = write_sentiment_csv(tmp_path / "data.csv", 80, seed=31)
    args = [
        "data=local",
        f"data.path={data}",
        "train.epochs=2",
        "train.early_stopping.enabled=false",
        "regularization.hidden_dropout=0",
        "regularization.attention_dropout=0",
        "device.threads=2",
    ]
    finetune(tmp_path / "on", cache_dir, *args)
    banner_on = capsys.readouterr().out
    finetune(tmp_path / "off", cache_dir, *args, "device.fast_paths=false")
    banner_off = capsys.readouterr().out

    on, off = (read_json(tmp_path / run / "out" / "metrics.json") for run in ("on", "off"))
    every = [*NAMES, "batch_shards"]  # the model's paths, then the training loop's
    assert on["fast_paths"]["applied"] == every
    assert off["fast_paths"] == {"applied": [], "skipped": {name: "device.fast_paths=false" for name in every}}
    assert "fast paths" in banner_on and "first_token_only, fast_dropout, row_gradient, batch_shards" in banner_on
    assert "none; skipped: first_token_only, fast_dropout, row_gradient, batch_shards (device.fast_paths=false)" in (
        " ".join(banner_off.split())
    )
    assert on["steps"] == off["steps"] > 4
    for a, b in zip(on["history"], off["history"]):
        assert a["val/loss"] == pytest.approx(b["val/loss"], abs=1e-5)
    weights_on, weights_off = (
        load_file(str(tmp_path / run / "out" / "checkpoints" / "last" / "model.safetensors")) for run in ("on", "off")
    )
    assert weights_on.keys() == weights_off.keys()
    for name, tensor in weights_on.items():
        assert torch.allclose(tensor, weights_off[name], atol=1e-5), name
