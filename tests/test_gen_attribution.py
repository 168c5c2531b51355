"""Attributions of generated answers (task=gen, lmreason.evaluation.gen_attribution) on tiny-gpt: completeness,
a hand-built decoder whose answer depends on one prompt token, the jsonl round trip, evaluate, bad input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_GEN_TRAIN, TINY_SHAPE, acfg, read_json, run_command

from lmreason.errors import UserError

GEN_TRAIN = [*TINY_GEN_TRAIN, "train.epochs=1"]


@pytest.fixture(scope="module")
def tiny_dir(cache_dir):
    from lmreason.models.packaged import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct-config", cache_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


def tiny_decoder(tiny_dir, **extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_dir)
    config.update({**TINY_SHAPE, **extra})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def session_of(model, tokenizer):
    from lmreason.evaluation.predict import InferenceSession

    return InferenceSession(model.eval(), tokenizer, torch.device("cpu"), "fp32", 8, 96)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


PROMPTS = ["What is 3 + 4?", "Add 10 and 5, then subtract 3. What is left?"]


def test_completeness_and_the_explained_quantity_on_tiny_gpt(tiny_dir, tokenizer):
    """Token scores sum to F(x) - F(baseline) (small delta; this random decoder is rough along the path: 64 steps
    miss by 7%, 256 by < 0.01%); F is the answer's teacher-forced log-probability;
    the chat template's tokens get nothing; words partition the prompt's pieces."""
    from lmreason.evaluation.gen_attribution import answer_logprobs, attribute_generation
    from lmreason.tasks.gen import GenerationTask

    model = tiny_decoder(tiny_dir, initializer_range=0.2)
    session, task = session_of(model, tokenizer), GenerationTask()
    answers = [ids(tokenizer, "7"), ids(tokenizer, "12 apples")]
    attributions = attribute_generation(session, task, PROMPTS, answers, acfg(n_steps=256))
    for prompt, answer, a in zip(PROMPTS, answers, attributions):
        assert abs(a.logit_change) > 1e-2  # a real change to explain
        assert abs(sum(a.token_scores) - a.logit_change) == pytest.approx(abs(a.delta), abs=1e-4)
        assert abs(a.delta) < 0.05 * abs(a.logit_change)
        assert sum(a.scores) == pytest.approx(sum(a.token_scores), abs=1e-4)  # only the user's prompt is scored
        assert "".join(a.words) == "".join(prompt.split())  # its words, spaces left out
        # F by hand: the full sequence through the model, log-softmax at the answer positions
        prompt_ids = task.encode_prompts(tokenizer, [prompt])[0]
        full = torch.tensor([prompt_ids + answer])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=full).logits.float()[0], dim=-1)
        by_hand = sum(float(logp[len(prompt_ids) - 1 + t, token]) for t, token in enumerate(answer))
        assert a.target_logprob == pytest.approx(by_hand, abs=1e-4)
        assert a.confidence == pytest.approx(np.exp(by_hand), rel=1e-3)
        assert a.answer_tokens == tokenizer.convert_ids_to_tokens(answer)
    assert answer_logprobs(session, task, PROMPTS, answers) == pytest.approx([a.target_logprob for a in attributions])
    for method in ("gradient_x_input", "occlusion"):
        other = attribute_generation(session, task, PROMPTS, answers, acfg(method=method))
        assert [o.words for o in other] == [a.words for a in attributions]
    occluded = attribute_generation(session, task, PROMPTS[:1], answers[:1], acfg(method="occlusion"))[0]
    dropped = answer_logprobs(session, task, ["What is  + 4?"], answers[:1])[0]  # "3" deleted, spacing kept
    assert occluded.scores[occluded.words.index("3")] == pytest.approx(occluded.target_logprob - dropped, abs=1e-4)


class OneTokenDecoder(torch.nn.Module):
    """Hand-built causal LM: at every position the logit of `answer_id` is 3 tanh(count of `token_id` so far), every
    other logit 0; every other token's embedding is orthogonal to the one direction read. Only `token_id` matters."""

    def __init__(self, vocab_size: int, token_id: int, answer_id: int, pad_id: int):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        weight = torch.randn(vocab_size, 4, generator=g)
        weight[:, 0] = 0.0
        weight[token_id] = torch.tensor([1.0, 0.0, 0.0, 0.0])
        weight[pad_id] = 0.0  # the baseline's embedding
        self.embeddings = torch.nn.Embedding.from_pretrained(weight, freeze=False)
        self.answer_id, self.vocab_size = answer_id, vocab_size

    def get_input_embeddings(self):
        return self.embeddings

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        h = (self.embeddings(input_ids) * attention_mask[..., None]).cumsum(dim=1)  # causal: the prefix so far
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., self.answer_id] = 3 * torch.tanh(h[..., 0]) + 0.0 * h[..., 1:].sum(-1)
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def test_the_one_prompt_token_the_answer_depends_on_gets_all_the_attribution(tokenizer):
    from lmreason.evaluation.gen_attribution import attribute_generation
    from lmreason.tasks.gen import GenerationTask

    great, seven = tokenizer.convert_tokens_to_ids("Ġgreat"), ids(tokenizer, "7")
    model = OneTokenDecoder(len(tokenizer), great, seven[0], tokenizer.pad_token_id)
    prompts = ["Is the film great?", "a long and great story", "honestly, it was great"]
    for a in attribute_generation(
        session_of(model, tokenizer), GenerationTask(), prompts, [seven] * 3, acfg(n_steps=64)
    ):
        j = a.words.index("great")
        assert abs(a.scores[j]) / sum(abs(s) for s in a.scores) > 0.999, (a.words, a.scores)
        v = len(tokenizer)  # F(x) - F(baseline) = [s - log(e^s + V - 1)] - [0 - log V], s = 3 tanh(1)
        s = 3 * np.tanh(1.0)
        assert a.logit_change == pytest.approx(s - np.log(np.exp(s) + v - 1) + np.log(v), rel=1e-4)
        assert a.scores[j] == pytest.approx(a.logit_change, rel=1e-3)  # completeness


def test_faithfulness_of_the_log_probability_beats_random_for_the_one_token_decoder(tokenizer):
    from lmreason.evaluation.gen_attribution import attribute_generation, gen_faithfulness
    from lmreason.tasks.gen import GenerationTask

    great, seven = tokenizer.convert_tokens_to_ids("Ġgreat"), ids(tokenizer, "7")
    session, task = (
        session_of(OneTokenDecoder(len(tokenizer), great, seven[0], tokenizer.pad_token_id), tokenizer),
        GenerationTask(),
    )
    prompts = [f"{w} film was {adj} great and {end}" for w in ("the", "a") for adj in ("very", "so") for end in "xy"]
    answers = [seven] * len(prompts)
    attributions = attribute_generation(session, task, prompts, answers, acfg())
    f = gen_faithfulness(session, task, attributions, prompts, answers, acfg())
    assert f["comprehensiveness"] > f["random_comprehensiveness"] + 0.5  # deleting "great" costs ~2.3 nats
    assert f["sufficiency"] < f["random_sufficiency"] - 0.5
    assert f["sufficiency"] == pytest.approx(0.0, abs=1e-4)  # "great" alone keeps all of F
    assert f["units"].startswith("nats")


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory, tiny_dir):
    """A plain tiny-gpt model dir (weights + tokenizer) and a copy without the tokenizer."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("gen-attr")
    model = tiny_decoder(tiny_dir)
    model.save_pretrained(root / "gen")
    AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(root / "gen")
    model.save_pretrained(root / "no-tokenizer")
    return root


def test_infer_explain_on_a_gen_model_round_trips_through_the_jsonl(gen_dir, tmp_path, cache_dir, capsys):
    out, source = tmp_path / "explained.jsonl", tmp_path / "prompts.jsonl"
    source.write_text('{"text": "What is 3 + 4?"}\n{"text": "Add 10 and 5."}\n')
    rows = run_command(
        "infer",
        f"checkpoint={gen_dir / 'gen'}",
        f"input={source}",
        "explain=true",
        "generation.max_new_tokens=3",
        f"output={out}",
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert written == json.loads(json.dumps(rows))
    assert [r["words"] for r in written] == [["What", "is", "3", "+", "4", "?"], ["Add", "10", "and", "5", "."]]
    row = written[0]
    assert row["method"] == "integrated_gradients" and row["target_logprob"] < 0
    assert len(row["scores"]) == len(row["words"]) and len(row["token_scores"]) == len(row["tokens"])
    assert "answer_ids" not in row and len(row["answer_tokens"]) == 3  # 3 new tokens, no eos from a random model
    assert abs(sum(row["token_scores"]) - row["logit_change"] - row["delta"]) < 1e-4
    capsys.readouterr()
    run_command(
        "infer",
        f"checkpoint={gen_dir / 'gen'}",
        "text=What is 3 + 4?",
        "explain=true",
        "generation.max_new_tokens=2",
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    shown = capsys.readouterr().out
    assert "answer " in shown and "log p" in shown and "top:" in shown and "raises the answer" in shown


def test_explain_bad_input_is_one_clear_line(gen_dir, tmp_path, cache_dir):
    with pytest.raises(UserError, match="has no tokenizer") as info:
        run_command(
            "infer",
            f"checkpoint={gen_dir / 'no-tokenizer'}",
            "text=What is 3 + 4?",
            "explain=true",
            output_dir=tmp_path,
            cache_dir=cache_dir,
        )
    assert "\n" not in str(info.value) and "save the tokenizer" in str(info.value)
    with pytest.raises(UserError, match="attribution.target=reference: infer has no reference") as info:
        run_command(
            "infer",
            f"checkpoint={gen_dir / 'gen'}",
            "text=What is 3 + 4?",
            "explain=true",
            "attribution.target=reference",
            output_dir=tmp_path,
            cache_dir=cache_dir,
        )
    assert "\n" not in str(info.value)
    with pytest.raises(Exception, match="answer"):  # an unknown target fails at compose time, naming it
        run_command(
            "infer",
            f"checkpoint={gen_dir / 'gen'}",
            "text=x",
            "explain=true",
            "attribution.target=answer",
            output_dir=tmp_path,
            cache_dir=cache_dir,
        )


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, cache_dir, tiny_dir):
    run_dir = tmp_path_factory.mktemp("gen-attr-run") / "run"
    run_command("finetune", *GEN_TRAIN, output_dir=run_dir, cache_dir=cache_dir)
    return run_dir


@pytest.mark.parametrize("target", ["generated", "reference"])
def test_evaluate_attribution_on_a_gen_run(gen_run, tmp_path, cache_dir, capsys, target):
    results = run_command(
        "evaluate",
        f"run={gen_run}",
        "device=cpu",
        "diagnostics=[attribution]",
        "generation.max_new_tokens=4",
        "diagnostics.attribution.errors=3",
        "diagnostics.attribution.correct=3",
        "diagnostics.attribution.n_steps=16",
        f"diagnostics.attribution.target={target}",
        output_dir=tmp_path,
        cache_dir=cache_dir,
    )
    out = capsys.readouterr().out
    assert set(results["attribution"]) == {"test", "ood"}
    for split in ("test", "ood"):
        payload = read_json(gen_run / "eval" / split / "attribution.json")
        records = [
            json.loads(line) for line in (gen_run / "eval" / split / "attributions.jsonl").read_text().splitlines()
        ]
        generations = [
            json.loads(line) for line in (gen_run / "eval" / split / "generations.jsonl").read_text().splitlines()
        ]
        assert payload["task"] == "gen" and payload["target"] == target and records
        assert payload["examples"]["error"] == sum(r["group"] == "error" for r in records) <= 3
        for r in records:
            g = generations[r["row"]]
            assert (r["group"] == "correct") == g["correct"]  # errors: wrong by the task's scorer
            assert r["label"] == (g["generated"] if target == "generated" else g["reference"].strip())
            assert r["text"] == g["prompt"] and {"tokens", "words", "scores", "delta", "target_logprob"} <= set(r)
        f = payload["faithfulness"]
        assert set(f["per_k"]) == {"5.0", "10.0", "20.0", "50.0"} and f["units"].startswith("nats")
        for key in ("comprehensiveness", "sufficiency", "random_comprehensiveness", "random_sufficiency"):
            assert f[key] == pytest.approx(np.mean([v[key] for v in f["per_k"].values()]))
        assert -1 <= payload["sanity_check"]["rank_correlation"] <= 1
    assert "attribution faithfulness" in out and "nats" in out and "what the model leans on" not in out
