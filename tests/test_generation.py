"""task=gen on tiny-gpt: prompt masking, batched generation, finetune -> evaluate -> infer, LoRA checkpoints.

The tiny decoder is random-init with SmolLM2's config and tokenizer (`smollm2-135m-instruct-config`,
read once per test session from the packaged GGUF's metadata: no weights are de-quantized).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import REPO, TINY_SHAPE, read_json, run_command
from omegaconf import OmegaConf

GEN_TRAIN = [
    "model=tiny-gpt",
    "task=gen",
    "data=chain_sum",
    "data.sizes={train: 64, validation: 16, test: 16, ood: 16}",
    "device=cpu",
    "device.precision=fp32",
    "optimizer.lr=3e-3",
    "scheduler.warmup_steps=0",
    "train.batch_size=8",
    "train.log_every_steps=2",
    "generation.max_new_tokens=4",
]


@pytest.fixture(scope="module")
def tiny_dir(cache_dir):
    """SmolLM2's config + tokenizer in the session cache (what model=tiny-gpt reads)."""
    from lmreason.models.packaged import resolve_model_path

    return resolve_model_path("smollm2-135m-instruct-config", cache_dir)


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2: pad is eos, so masks must come from lengths
    return tok


def tiny_model(tiny_dir, seed=0):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_dir)
    config.update(TINY_SHAPE)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def gen_cfg(**task):
    return OmegaConf.create({"model": {"name_or_path": "x", "max_length": 96}, "task": {"name": "gen", **task}})


def test_tokenize_masks_the_prompt_and_appends_eos(tokenizer):
    from lmreason.tasks.gen import GenerationTask
    from lmreason.training.batching import TokenizedSplit

    task = GenerationTask()
    frame = pd.DataFrame(
        {"prompt": ["What is 2 + 2?", "Add 10 and 5, then subtract 3. What is left?"], "completion": ["4", "12"]}
    )
    cols = task.tokenize(frame, tokenizer, gen_cfg(), [])
    for ids, labels, n_prompt, completion in zip(
        cols["input_ids"], cols["labels"], cols["prompt_length"], frame["completion"]
    ):
        assert labels[:n_prompt] == [-100] * n_prompt  # no loss on the prompt
        answer = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert labels[n_prompt:] == ids[n_prompt:] == answer  # loss on the completion and its eos
        assert "<|im_start|>assistant" in tokenizer.decode(ids[:n_prompt])  # the chat template
    # Collated: padding (eos ids!) gets label -100 and attention 0, from lengths.
    import datasets

    batch = TokenizedSplit(datasets.Dataset.from_dict(cols), task, tokenizer.pad_token_id).collate([0, 1])
    short = 0 if cols["length"][0] < cols["length"][1] else 1
    n = cols["length"][short]
    assert batch["attention_mask"][short, :n].all() and not batch["attention_mask"][short, n:].any()
    assert (batch["labels"][short, n:] == -100).all()
    assert int((batch["labels"] != -100).sum()) == sum(
        len(c) - p for c, p in zip(cols["input_ids"], cols["prompt_length"])
    )
    # Plain template; truncation keeps the completion and the end of the prompt.
    plain = task.tokenize(frame, tokenizer, gen_cfg(use_chat_template=False), [])
    assert tokenizer.decode(plain["input_ids"][0][: plain["prompt_length"][0]]).startswith("Question: What is 2 + 2?")
    long = pd.DataFrame({"prompt": ["word " * 200 + "END?"], "completion": ["42"]})
    cut = task.tokenize(long, tokenizer, gen_cfg(), [])
    assert cut["length"][0] == 96 and cut["full_length"][0] > 96
    assert tokenizer.decode(cut["input_ids"][0]).removesuffix("<|im_end|>").endswith("assistant\n42")


def test_loss_ignores_prompt_tokens(tiny_dir, tokenizer):
    import torch.nn.functional as F

    from lmreason.tasks.gen import GenerationTask

    task, model = GenerationTask(), tiny_model(tiny_dir)
    ids = torch.randint(5, 1000, (2, 12))
    labels = ids.clone()
    labels[0, :7], labels[1, :9] = -100, -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        loss, _ = task.forward(model, batch)
        logits = model(input_ids=ids).logits
    expected = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert torch.allclose(loss, expected, atol=1e-5)  # mean over the 5 + 3 completion tokens only
    everything = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert not torch.allclose(loss, everything, atol=1e-3)


def test_left_padded_batches_generate_as_one_at_a_time(tiny_dir, tokenizer):
    from lmreason.evaluation.generation import generate_ids
    from lmreason.tasks.gen import encode_prompts, task_settings

    model = tiny_model(tiny_dir, seed=1)
    prompts = ["1 + 1 =", "What is the sum of 12, 30 and 7, minus 4?", "Hi", "Count: one two three four five six"]
    ids = encode_prompts(tokenizer, prompts, task_settings(None))
    assert len({len(p) for p in ids}) == 4  # four widths: real left padding
    settings = {"do_sample": False, "max_new_tokens": 6, "temperature": 1.0, "top_p": 1.0}
    batched, _ = generate_ids(
        model, tokenizer, ids, OmegaConf.create({**settings, "batch_size": 4}), torch.device("cpu"), "fp32"
    )
    single, _ = generate_ids(
        model, tokenizer, ids, OmegaConf.create({**settings, "batch_size": 1}), torch.device("cpu"), "fp32"
    )
    assert batched == single and all(batched)


def gen_finetune(run_dir, cache_dir, *overrides):
    """`lmreason finetune` with GEN_TRAIN, in-process."""
    return run_command("finetune", *GEN_TRAIN, *overrides, output_dir=run_dir, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def gen_run(tmp_path_factory, cache_dir, tiny_dir):
    run_dir = tmp_path_factory.mktemp("gen") / "run"
    gen_finetune(run_dir, cache_dir, "train.epochs=3", "task.generate_every_evals=2", "task.generate_samples=8")
    return run_dir


def test_finetune_gen_learns_and_samples_answers(gen_run):
    metrics = read_json(gen_run / "metrics.json")
    losses = [h["val/loss"] for h in metrics["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert metrics["monitor"] == "val/loss"
    # generate_every_evals=2: the 2nd validation and the last one score generated answers.
    assert ["val/exact_match" in h for h in metrics["history"]] == [False, True, True]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {
        p.name for p in (gen_run / "checkpoints" / "best").iterdir()
    }


def test_evaluate_gen_writes_generations_slices_and_the_gap(tmp_path, cache_dir, gen_run, capsys):
    run_command("evaluate", f"run={gen_run}", "device=cpu", output_dir=tmp_path / "out", cache_dir=cache_dir)
    out = capsys.readouterr().out
    test = read_json(gen_run / "eval" / "test" / "metrics.json")
    assert test["n"] == 16 and test["scorer"] == "reasoning-gym"
    for key in ("exact_match", "score", "loss", "perplexity", "unfinished"):
        assert isinstance(test[key], float)
    assert set(test["slices"]["difficulty"]) == {"2", "3"}  # chain_sum terms in distribution
    assert sum(s["n"] for s in test["slices"]["difficulty"].values()) == 16
    rows = [json.loads(line) for line in (gen_run / "eval" / "test" / "generations.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {"prompt", "reference", "generated", "score", "correct", "difficulty"} <= set(rows[0])
    assert test["exact_match"] == sum(r["correct"] for r in rows) / 16
    ood = read_json(gen_run / "eval" / "ood" / "metrics.json")
    assert set(ood["slices"]["difficulty"]) == {"4", "5"}
    gap = read_json(gen_run / "eval" / "gap.json")["gap"]
    assert gap["exact_match"]["gap"] == gap["exact_match"]["in_distribution"] - gap["exact_match"]["ood"]
    assert "perplexity" in gap and "OOD" in out
    # bootstrap intervals of exact match and score, and the report page of a generation run
    assert test["exact_match_ci"][0] <= test["exact_match"] <= test["exact_match_ci"][1]
    assert "gap_ci" in gap["exact_match"] and "gap_ci" in gap["score"]
    page = (gen_run / "eval" / "report.html").read_text()
    assert "exact_match by difficulty" in page and "task=gen has no classes" in page
    assert "file://" in out


def test_infer_gen_streams_one_prompt_and_batches_a_file(tmp_path, cache_dir, gen_run, capsys):
    output = tmp_path / "answers.jsonl"
    prompts = ["State the final answer to the following arithmetic problem: 3 + 4 =", "What is 10 - 2?"]
    source = tmp_path / "prompts.jsonl"
    source.write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    run_command(
        "infer",
        f"run={gen_run}",
        f"input={source}",
        "text_column=prompt",
        f"output={output}",
        "device=cpu",
        output_dir=tmp_path / "out",
        cache_dir=cache_dir,
    )
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["text"] for r in rows] == prompts and all("generated" in r for r in rows)
    capsys.readouterr()
    run_command(
        "infer",
        f"run={gen_run}",
        f"text='{prompts[0]}'",
        "device=cpu",
        output_dir=tmp_path / "out",
        cache_dir=cache_dir,
    )
    streamed = capsys.readouterr().out
    assert rows[0]["generated"] in streamed  # greedy: the streamed answer is the batched one


def test_lora_checkpoint_is_merged_and_resumable(tmp_path, tiny_dir, tokenizer):
    """save_merged: a plain model dir equal to base + adapter; the adapter under adapter/ rebuilds the model to
    resume."""
    from transformers import AutoModelForCausalLM

    from lmreason.tasks.gen import GenerationTask

    cfg = OmegaConf.create(
        {
            "seed": 3,
            "cache_dir": str(tmp_path),
            "task": {"name": "gen"},
            "regularization": None,
            "model": {
                "name_or_path": tiny_dir,
                "arch": "decoder",
                "tokenizer": None,
                "from_scratch": True,
                "config_overrides": TINY_SHAPE,
                "max_length": 96,
                "trust_remote_code": False,
                "lora": {
                    "enabled": True,
                    "rank": 4,
                    "alpha": 8,
                    "dropout": 0.0,
                    "target_modules": ["q_proj", "v_proj"],
                    "save_merged": True,
                },
            },
        }
    )
    task = GenerationTask()
    from lmreason.seeding import seed_everything

    seed_everything(cfg.seed)
    model = task.build_model(cfg, [])
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained adapter (B starts at zero)
    model.eval()
    ids = torch.randint(5, 1000, (1, 10))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    target = tmp_path / "ckpt"
    task.save_model(model, tokenizer, target, {"step": 1}, {"task": "gen"}, "seed: 3\n", cfg)
    merged = AutoModelForCausalLM.from_pretrained(target, use_safetensors=True).eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    resumed = task.load_model(target, cfg).eval()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
        assert torch.allclose(resumed(input_ids=ids).logits, expected, atol=1e-5)
    assert (target / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_lora_adapter_only_run_loads_for_evaluate_and_infer(tmp_path, cache_dir, tiny_dir, tokenizer):
    base = tmp_path / "base"
    tiny_model(tiny_dir).save_pretrained(base)
    tokenizer.save_pretrained(base)
    run_dir = tmp_path / "run"
    gen_finetune(
        run_dir,
        cache_dir,
        f"model.name_or_path={base}",
        "model.from_scratch=false",
        "model.lora.enabled=true",
        "model.lora.save_merged=false",
        "train.epochs=1",
    )
    best = run_dir / "checkpoints" / "best"
    assert (best / "adapter_model.safetensors").is_file() and not (best / "model.safetensors").exists()
    run_command(
        "evaluate",
        f"run={run_dir}",
        "compare_ood=false",
        "device=cpu",
        output_dir=tmp_path / "out",
        cache_dir=cache_dir,
    )
    assert read_json(run_dir / "eval" / "test" / "metrics.json")["n"] == 16


def test_bad_lora_settings_and_pair_inputs_are_user_errors(tiny_dir, tokenizer):
    from lmreason.errors import UserError
    from lmreason.evaluation.inference import infer_answers
    from lmreason.tasks.gen import GenerationTask

    # (save_merged=false on a random-init base is refused by lmreason.validation: tests/test_validate.py)
    model_cfg = OmegaConf.create(
        {
            "from_scratch": False,
            "lora": {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["query"], "save_merged": False},
        }
    )
    with pytest.raises(UserError, match="linear layers of this model: .*q_proj"):
        GenerationTask._wrap_lora(tiny_model(tiny_dir), model_cfg)
    with pytest.raises(UserError, match="one text"):
        infer_answers(None, GenerationTask(), ["a"], ["b"], stream=False)


def test_bench_generate_script_runs_on_tiny_gpt(tmp_path, cache_dir, tiny_dir):
    """The script's `main(argv)`, in-process (its `__main__` only turns the result into an exit status);
    `tiny_dir`: the SmolLM2 config it reads is the one already in the session cache."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_generate", REPO / "scripts" / "bench_generate.py")
    bench_generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_generate)
    output = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        returned = bench_generate.main(
            [
                "--model",
                "tiny",
                "--prompts",
                "4",
                "--batch-size",
                "2",
                "--max-new-tokens",
                "3",
                "--repeats",
                "1",
                "--cache-dir",
                str(cache_dir),
                "--output",
                str(output),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    result = read_json(output)
    assert returned == result
    assert result["prompts"] == 4 and result["ratio_pipeline_over_lmreason"] > 0
    assert result["answers_agree"] == 1.0  # same greedy answers from both paths
