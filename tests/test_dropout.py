"""The CPU dropout lmreason trains with: torch's dropout distribution, gradients and attention math."""

import pytest
import torch
import torch.nn as nn
from conftest import tiny_bert_classifier

from lmreason.training import dropout as fast
from lmreason.training.dropout import fast_dropout, keep_mask, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_keeps_one_minus_p_of_elements(p):
    torch.manual_seed(0)
    keep = keep_mask((1000, 1001), p)  # odd size: the last 64-bit draw is used in part
    assert keep.shape == (1000, 1001) and keep.dtype == torch.bool
    assert keep.float().mean().item() == pytest.approx(1 - p, abs=2e-3)


def test_mask_is_reproducible_from_the_seed():
    torch.manual_seed(3)
    first = keep_mask((64, 64), 0.1)
    torch.manual_seed(3)
    assert torch.equal(first, keep_mask((64, 64), 0.1))
    assert not torch.equal(first, keep_mask((64, 64), 0.1))


def test_dropout_zeroes_or_scales_and_its_gradient_matches():
    torch.manual_seed(0)
    x = torch.randn(200, 30, requires_grad=True)
    y = fast_dropout(x, 0.25)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()
    assert torch.allclose(x.grad, kept.float() / 0.75)
    assert fast_dropout(x, 0.25, training=False) is x
    assert fast_dropout(x, 0.0) is x


def test_swap_keeps_weights_and_evaluation_outputs():
    model, reference = tiny_bert_classifier(), tiny_bert_classifier()
    swapped = use_fast_dropout(model, torch.device("cpu"))
    assert swapped == sum(isinstance(m, nn.Dropout) for m in reference.modules())
    assert model.config._attn_implementation == fast.ATTENTION
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert "attn_implementation" not in model.config.to_dict()  # nothing of it reaches a saved config
    ids = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0]])
    mask = (ids != 0).long()
    model.eval(), reference.eval()
    with torch.no_grad():
        assert torch.allclose(
            model(input_ids=ids, attention_mask=mask).logits,
            reference(input_ids=ids, attention_mask=mask).logits,
            atol=1e-6,
        )


def test_training_attention_is_sdpa_with_the_mask_applied(monkeypatch):
    """With every element kept, dropped-out attention is SDPA's attention scaled by 1 / (1 - p)."""
    model = tiny_bert_classifier(attention_probs_dropout_prob=0.2, hidden_dropout_prob=0.0)
    use_fast_dropout(model, torch.device("cpu"))
    model.train()
    monkeypatch.setattr(fast, "keep_mask", lambda shape, p, device=None: torch.ones(shape, dtype=torch.bool))
    attention = model.bert.encoder.layer[0].attention.self
    torch.manual_seed(1)
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    padding = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None, :]
    ours, _ = fast.attention_with_fast_dropout(attention, q, k, v, padding, scaling=0.3, dropout=0.2)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=padding, scale=0.3)
    assert torch.allclose(ours, expected.transpose(1, 2) / 0.8, atol=1e-6)


def test_nothing_changes_off_the_cpu():
    model = tiny_bert_classifier()
    assert use_fast_dropout(model, torch.device("meta")) == 0
    assert all(type(m) is not fast.FastDropout for m in model.modules())
