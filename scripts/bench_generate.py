#!/usr/bin/env python3
"""Batched generation speed: lmreason (evaluate/infer) vs transformers.pipeline("text-generation").

Both sides get the same model object, the same chat-formatted prompts (reasoning-gym
chain_sum questions), batch size, max_new_tokens, greedy decoding, eos and pad ids.
Runs alternate (lmreason, pipeline, lmreason, ...) so that load from other processes
hits both alike; each side's median wall time is reported and

    ratio = pipeline seconds / lmreason seconds   (> 1: lmreason is faster)

is printed and written as JSON with the settings and how many answers agree.

    python scripts/bench_generate.py                               # SmolLM2-135M, 64 prompts, batch 16
    python scripts/bench_generate.py --model tiny --prompts 8      # plumbing check with a tiny random decoder
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="packaged name, model dir or hub id; 'tiny' = random 2-layer SmolLM2-shaped decoder",
    )
    parser.add_argument("--prompts", type=int, default=64, help="number of prompts")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate() call, both sides")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="generated tokens per prompt at most")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--cache-dir", default=None, help="lmreason cache dir (default: $LMREASON_CACHE_DIR or ~/.cache/lmreason)"
    )
    parser.add_argument("--output", default="outputs/bench/generate.json", help="where to write the JSON result")
    return parser.parse_args(argv)


def load(model_name: str, cache_dir):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lmreason.models.packaged import resolve_model_path

    if model_name == "tiny":
        path = resolve_model_path("smollm2-135m-instruct-config", cache_dir)
        config = AutoConfig.from_pretrained(path)
        config.update(
            {
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "head_dim": 16,
                "intermediate_size": 128,
            }
        )
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    else:
        path = resolve_model_path(model_name, cache_dir)
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def chain_sum_questions(n: int) -> list[str]:
    import reasoning_gym

    data = reasoning_gym.create_dataset(
        "chain_sum", seed=7, size=n, min_terms=2, max_terms=5, min_digits=1, max_digits=2
    )
    return [data[i]["question"] for i in range(n)]


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch
    from omegaconf import OmegaConf
    from transformers import pipeline

    from lmreason.evaluation.generation import eos_ids, generate_texts
    from lmreason.tasks.gen import encode_prompts, format_prompts, task_settings

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, tokenizer = load(args.model, args.cache_dir)
    model.to(device)
    settings = task_settings(None)  # the default task=gen prompt format: the chat template
    questions = chain_sum_questions(args.prompts)
    texts, _ = format_prompts(tokenizer, questions, settings)
    prompt_ids = encode_prompts(tokenizer, questions, settings)
    gen_cfg = OmegaConf.create(
        {
            "do_sample": False,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 1.0,
            "top_p": 1.0,
            "batch_size": args.batch_size,
        }
    )
    stops = eos_ids(tokenizer, model)
    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, device=device)

    def run_lmreason():
        return generate_texts(model, tokenizer, prompt_ids, gen_cfg, device, "fp32")[0]

    def run_pipeline():
        outs = pipe(
            texts,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            return_full_text=False,
            add_special_tokens=False,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
        )
        return [o[0]["generated_text"].strip() for o in outs]

    # Warm-up (one batch each): first-call allocations and lazy imports are not generation speed.
    generate_texts(model, tokenizer, prompt_ids[: args.batch_size], gen_cfg, device, "fp32")
    pipe(
        texts[: args.batch_size],
        batch_size=args.batch_size,
        max_new_tokens=2,
        do_sample=False,
        return_full_text=False,
        add_special_tokens=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    times = {"lmreason": [], "pipeline": []}
    answers = {}
    for _ in range(args.repeats):
        for name, fn in (("lmreason", run_lmreason), ("pipeline", run_pipeline)):
            started = time.perf_counter()
            answers[name] = fn()
            times[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in times.items()}
    agree = sum(a == b for a, b in zip(answers["lmreason"], answers["pipeline"])) / len(questions)
    result = {
        "model": args.model,
        "prompts": len(questions),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "seconds": times,
        "median_seconds": median,
        "ratio_pipeline_over_lmreason": median["pipeline"] / median["lmreason"],
        "answers_agree": agree,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(
        f"lmreason {median['lmreason']:.2f} s, pipeline {median['pipeline']:.2f} s (median of {args.repeats}) "
        f"for {len(questions)} prompts, batch {args.batch_size}, {args.max_new_tokens} new tokens: "
        f"ratio pipeline/lmreason = {result['ratio_pipeline_over_lmreason']:.2f}; answers agree {agree:.0%}. "
        f"Wrote {out}"
    )
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
