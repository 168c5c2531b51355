"""The batched generation engine: every answer lmreason generates comes from here.

The gen task's validation samples, `evaluate` and `infer` on a task=gen model, and
`scripts/bench_generate.py` all call `generate_texts` / `generate_ids`. Prompts go in as
token ids (formatted by the gen task); batches are built longest-first and left-padded
by the tokenizer (`padding_side="left"`), so the new tokens of every row start at the
same column. SmolLM2's pad token *is* its eos token: the attention mask comes from the
prompt lengths (the tokenizer's pad builds it so), never from comparing ids with the pad id.
"""

from __future__ import annotations

import numpy as np

from lmreason.errors import UserError


def eos_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an answer: the tokenizer's eos plus the model's generation eos (e.g. SmolLM2's <|im_end|>)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    extra = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in extra if isinstance(extra, (list, tuple)) else [extra]:
        if i is not None and i not in ids:
            ids.append(int(i))
    return ids


def generate_texts(
    model, tokenizer, prompt_ids: list[list[int]], gen_cfg, device, precision, streamer=None
) -> tuple[list[str], list[bool]]:
    """Greedy or sampled completions for token-id prompts, batched longest-first with left padding.

    Returns (texts in input order, whether each stopped at eos rather than at max_new_tokens).
    `streamer` (a transformers TextStreamer) prints tokens as they come; batches are then of one prompt.
    """
    tokens, finished = generate_ids(model, tokenizer, prompt_ids, gen_cfg, device, precision, streamer)
    return decode_answers(tokenizer, tokens), finished


def decode_answers(tokenizer, tokens: list[list[int]]) -> list[str]:
    """The answers' texts as lmreason scores and shows them: special tokens left out, surrounding space stripped."""
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


def generate_ids(
    model, tokenizer, prompt_ids: list[list[int]], gen_cfg, device, precision, streamer=None
) -> tuple[list[list[int]], list[bool]]:
    """As `generate_texts`, but the new token ids of each answer (up to, not including, its eos).

    Raises:
        UserError: an empty prompt.
    """
    import torch
    from transformers import GenerationConfig

    from lmreason.training.batching import sorted_batches
    from lmreason.training.device import autocast

    stops = eos_ids(tokenizer, model)
    pad = tokenizer.pad_token_id  # lmreason's tokenizers always have one (the eos where none shipped)
    settings = {
        "max_new_tokens": int(gen_cfg.max_new_tokens),
        "do_sample": bool(gen_cfg.do_sample),
        "pad_token_id": pad,
        "eos_token_id": stops,
    }
    if gen_cfg.do_sample:
        settings.update(temperature=float(gen_cfg.temperature), top_p=float(gen_cfg.top_p), top_k=0)
    config = GenerationConfig(**settings)
    lengths = np.array([len(p) for p in prompt_ids])
    if (lengths == 0).any():
        raise UserError(f"prompt {int(np.argmin(lengths)) + 1} has no tokens; every prompt needs some text")
    answers, finished = [[] for _ in prompt_ids], [False] * len(prompt_ids)
    stop_set = torch.tensor(stops)
    for batch in sorted_batches(lengths, 1 if streamer is not None else int(gen_cfg.batch_size)):
        padded = tokenizer.pad(
            {"input_ids": [prompt_ids[i] for i in batch]},
            padding_side="left",
            return_attention_mask=True,
            return_tensors="pt",
        )  # (B, T) each
        width = padded["input_ids"].shape[1]
        with torch.inference_mode(), autocast(device, precision):
            out = model.generate(
                input_ids=padded["input_ids"].to(device),
                attention_mask=padded["attention_mask"].to(device),
                generation_config=config,
                streamer=streamer,
            )
        new = out[:, width:].cpu()  # (B, new tokens): after eos come pad tokens
        for row, i in enumerate(batch):
            tokens = new[row]
            at_stop = torch.isin(tokens, stop_set).nonzero()
            end = int(at_stop[0]) if len(at_stop) else len(tokens)
            finished[i] = bool(len(at_stop))
            answers[i] = tokens[:end].tolist()
    return answers, finished
