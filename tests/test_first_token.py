"""The last encoder layer computed at [CLS] only: same logits, same gradients, undone where it would not hold."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lmreason.models.first_token import first_token_only  # noqa: E402


def tiny_classifier(model_type: str = "bert", dropout: float = 0.0):
    config_class = {"bert": transformers.BertConfig, "roberta": transformers.RobertaConfig}[model_type]
    config = config_class(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=3,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    return transformers.AutoModelForSequenceClassification.from_config(config)


def padded_batch():
    ids = torch.randint(5, 120, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_same_logits_and_gradients_as_the_full_model(model_type):
    full = tiny_classifier(model_type)
    trimmed = copy.deepcopy(full)
    assert first_token_only(trimmed)
    batch, labels = padded_batch(), torch.tensor([0, 2, 1])
    for model in (full, trimmed):
        model.train()  # dropout 0: deterministic, and the training path (autograd) is the one checked
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, labels)
        loss.backward()
    assert torch.allclose(full(**batch).logits, trimmed(**batch).logits, atol=1e-5)
    for (name, p_full), (_, p_trim) in zip(full.named_parameters(), trimmed.named_parameters()):
        assert torch.allclose(p_full.grad, p_trim.grad, atol=1e-5), name
    # the last layer's output now holds position 0 only
    base = getattr(trimmed, trimmed.base_model_prefix)
    assert base(**batch).last_hidden_state.shape[1] == 1


def test_applied_once_and_only_where_the_head_reads_the_first_token():
    model = tiny_classifier()
    assert first_token_only(model) and first_token_only(model)  # idempotent
    gpt2 = transformers.GPT2ForSequenceClassification(
        transformers.GPT2Config(
            vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=2, pad_token_id=0
        )
    )
    assert not first_token_only(gpt2)  # its head reads the last token
    encoder = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        )
    )
    assert not first_token_only(encoder)  # not a classifier: every position is wanted
    assert encoder(input_ids=torch.tensor([[5, 6, 7]])).last_hidden_state.shape[1] == 3


def test_a_trim_that_changes_the_logits_is_undone(monkeypatch):
    import lmreason.models.first_token as first_token

    monkeypatch.setattr(first_token, "_first_token_layer_forward", lambda self, hidden, *a, **k: hidden[:, :1] * 0)
    model = tiny_classifier()
    expected = model.eval()(**padded_batch()).logits
    assert not first_token.first_token_only(model)
    assert "forward" not in model.bert.encoder.layer[-1].__dict__
    assert torch.allclose(model(**padded_batch()).logits, expected)
