"""The persistent embedding gradient gives the same training as torch's own backward."""

import copy

import torch
import transformers
from conftest import tiny_bert_classifier

from lmreason.training.embedding_grad import RowGradEmbedding, use_row_gradient


def tiny_bert():
    return tiny_bert_classifier(num_hidden_layers=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def train(model, batches, accumulate=1):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    grads = []
    for start in range(0, len(batches), accumulate):
        for ids, labels in batches[start : start + accumulate]:
            loss = model(input_ids=ids, attention_mask=(ids != 0).long(), labels=labels).loss / accumulate
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        grads.append(model.get_input_embeddings().weight.grad.clone())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return grads


def batches(n=6):
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 60, (4, 7), generator=generator)
        ids[1, 4:] = 0  # padding: the pad row must get no gradient
        out.append((ids, torch.randint(0, 2, (4,), generator=generator)))
    return out


def test_same_gradients_and_weights_as_torch_backward_with_accumulation():
    reference = tiny_bert()
    model = copy.deepcopy(reference)
    assert use_row_gradient(model, "cpu")
    assert type(model.get_input_embeddings()) is RowGradEmbedding
    data = batches()
    expected, ours = train(reference, data, accumulate=2), train(model, data, accumulate=2)
    for want, got in zip(expected, ours):
        assert torch.allclose(want, got, atol=1e-6)
        assert torch.count_nonzero(got[0]) == 0  # padding row
    for (name, want), got in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(want, got, atol=1e-6), name


def test_evaluation_and_frozen_embeddings_use_the_plain_lookup():
    model = tiny_bert()
    use_row_gradient(model, "cpu")
    model.eval()
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        model(input_ids=ids)
    assert getattr(model.get_input_embeddings(), "_row_gradient", None) is None


def test_not_installed_where_the_result_could_differ():
    assert not use_row_gradient(tiny_bert(), "cpu", world_size=2)  # DDP reduces through autograd hooks
    assert not use_row_gradient(tiny_bert(), "cuda")
    frozen = tiny_bert()
    frozen.get_input_embeddings().weight.requires_grad_(False)
    assert not use_row_gradient(frozen, "cpu")
    config = transformers.LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    assert not use_row_gradient(transformers.LlamaForCausalLM(config), "cpu")  # tied to the LM head
