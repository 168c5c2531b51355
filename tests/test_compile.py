"""device.compile=true: the model's forward through torch.compile in finetune (slow: compiling takes a minute)."""

from __future__ import annotations

import pytest
import torch
from conftest import finetune_in_process, read_json
from safetensors.torch import load_file

NO_DROPOUT = [
    "regularization=dropout",
    "regularization.hidden_dropout=0.0",
    "regularization.attention_dropout=0.0",
    "train.max_steps=4",
    "train.early_stopping.enabled=false",
    "device.threads=1",
]


@pytest.mark.slow
def test_compiled_training_gives_eager_weights_and_a_plain_checkpoint(tmp_path, cache_dir, split_dir, capsys):
    """Without dropout the compiled forward is the same arithmetic as eager (to float tolerance): after 4 AdamW
    steps the weights agree; the checkpoint is a plain transformers dir (no `_orig_mod.` keys)."""
    from transformers import AutoModelForSequenceClassification

    data = ["data=local", f"data.path={split_dir}", *NO_DROPOUT]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    finetune_in_process(eager, cache_dir, *data)
    finetune_in_process(compiled, cache_dir, *data, "device.compile=true")
    out = " ".join(capsys.readouterr().out.split())
    assert "compile torch.compile (inductor, dynamic shapes)" in out
    assert "skipped: fast_dropout, row_gradient (device.compile" in out  # custom kernels the compiler cannot trace
    metrics = read_json(compiled / "metrics.json")
    assert metrics["compile"] is True and read_json(eager / "metrics.json")["compile"] is False
    assert metrics["fast_paths"]["applied"] == ["first_token_only"]
    weights = [load_file(run / "checkpoints" / "last" / "model.safetensors") for run in (eager, compiled)]
    assert weights[0].keys() == weights[1].keys() and not any("_orig_mod" in k for k in weights[1])
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-4, atol=1e-5, msg=key)
    AutoModelForSequenceClassification.from_pretrained(compiled / "checkpoints" / "best")  # loads as saved
