"""Which prompt words a generated answer rests on (task=gen): attributions, faithfulness, the same sanity check.

The explained quantity is F(prompt) = sum over the answer's tokens of log p(token | prompt, earlier answer
tokens), teacher-forced: the generated answer (`attribution.target=generated`, its token ids as generated,
eos not included) or the reference completion (`target=reference`, tokenised as the gen task tokenises it
for training, eos not included). F is attributed to the prompt's tokens:
  integrated_gradients  Captum's LayerIntegratedGradients on the decoder's input-embedding layer. Input:
                        [formatted prompt][answer]; baseline: the same with every token of the user's prompt
                        (not the chat template / prompt_template around it, not special tokens) replaced by
                        the pad token. The answer tokens are the same in both, so they get no attribution;
                        completeness: the token scores sum to F(x) - F(baseline), up to `delta`.
  gradient_x_input      one backward pass, gradient x (embedding - pad embedding), delta its completeness error.
  occlusion             leave-one-word-out: F(x) - F(x without the word), in nats, no delta.
Scores are in nats of answer log-probability; `confidence` is exp(F(x)) (the whole answer's probability).
Words are the tokenizer's pre-tokenizer words inside the user's prompt (the template's tokens are listed
in `tokens`, with score 0 under IG, but are not words).

Faithfulness: ERASER's comprehensiveness / sufficiency with the answer's log-probability in place of the
label probability: F(x) - F(x without the top-k% words), F(x) - F(only them), the same answer tokens
teacher-forced, AOPC over k, beside the same figures for random words. Units: nats (not probability).
"""

from __future__ import annotations

import numpy as np

from lmreason.evaluation.attribution import (
    Attribution,
    edit_text,
    gradient_x_input,
    randomised_copy,
    sanity_verdict,
    spearman,
)

IGNORE = -100  # label of positions that are not answer tokens


def reference_ids(tokenizer, completions: list[str]) -> list[list[int]]:
    """The reference answers' token ids, as the gen task tokenises completions for training (eos not included)."""
    return tokenizer([str(c) for c in completions], add_special_tokens=False)["input_ids"]


def _encode(session, task, prompts: list[str]) -> list[dict]:
    """Per prompt: ids of the formatted prompt (left-truncated to max_length as `task.encode_prompts` does), their
    offsets and word ids in the formatted text, and which positions belong to the user's prompt."""
    tokenizer = session.tokenizer
    texts, special = task.format_prompts(tokenizer, prompts)
    encoded = tokenizer(texts, add_special_tokens=special, return_offsets_mapping=True)
    specials = set(tokenizer.all_special_ids)
    out = []
    for i, (text, prompt) in enumerate(zip(texts, prompts)):
        ids, offsets = encoded["input_ids"][i], encoded["offset_mapping"][i]
        word_ids = encoded.encodings[i].word_ids
        start = text.rfind(prompt) if prompt else -1  # the template comes around it; the user's text is verbatim
        end = start + len(prompt)
        cut = max(0, len(ids) - session.max_length) if session.max_length else 0
        ids, offsets, word_ids = ids[cut:], offsets[cut:], word_ids[cut:]
        in_prompt = [
            start >= 0 and t not in specials and s < end and e > start and e > s for t, (s, e) in zip(ids, offsets)
        ]
        if not ids:  # an empty prompt_template around an empty prompt: one pad token to condition on
            ids, offsets, word_ids, in_prompt = [tokenizer.pad_token_id], [(0, 0)], [None], [False]
        out.append(
            {"ids": ids, "offsets": offsets, "word_ids": word_ids, "in_prompt": in_prompt, "start": start, "end": end}
        )
    return out


def _batch(rows: list[dict], answers: list[list[int]], pad_id: int, device):
    """Right-padded (input_ids, attention_mask, labels, baseline ids, first answer position - 1) of a batch."""
    import torch

    lengths = [len(r["ids"]) + len(a) for r, a in zip(rows, answers)]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    baseline = ids.clone()
    for k, (r, a) in enumerate(zip(rows, answers)):
        n = len(r["ids"])
        full = torch.tensor(r["ids"] + list(a), dtype=torch.long)
        ids[k, : len(full)] = full
        mask[k, : len(full)] = 1
        labels[k, n : len(full)] = full[n:]
        base = full.clone()
        base[:n][torch.tensor(r["in_prompt"], dtype=torch.bool)] = pad_id
        baseline[k, : len(full)] = base
    first = max(0, min(len(r["ids"]) for r in rows) - 1)
    return ids.to(device), mask.to(device), labels.to(device), baseline.to(device), first


def _answer_logprob(model, first: int):
    """forward(ids, attention_mask, labels) -> (B,) sum of the answer tokens' log-probabilities; the LM head
    runs only from position `first` on (the earliest answer token of the batch)."""
    import torch

    def forward(ids, mask, labels):
        keep = ids.shape[1] - first
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits.float()[:, :-1]
        targets = labels[:, first + 1 :]
        picked = torch.log_softmax(logits, dim=-1).gather(2, targets.clamp(min=0)[..., None])[..., 0]
        return (picked * (targets != IGNORE)).sum(dim=1)

    return forward


def answer_logprobs(session, task, prompts: list[str], answers: list[list[int]], model=None) -> np.ndarray:
    """(N,) F = sum of log p(answer tokens | prompt), teacher-forced, batched longest-first."""
    import torch

    from lmreason.training.batching import sorted_batches

    model = session.model if model is None else model
    rows = _encode(session, task, prompts)
    lengths = np.array([len(r["ids"]) + len(a) for r, a in zip(rows, answers)])
    out = np.zeros(len(prompts))
    with torch.inference_mode():
        for batch in sorted_batches(lengths, session.batch_size):
            ids, mask, labels, _, first = _batch(
                [rows[i] for i in batch], [answers[i] for i in batch], session.tokenizer.pad_token_id, session.device
            )
            out[batch] = _answer_logprob(model, first)(ids, mask, labels).cpu().numpy()
    return out


def attribute_generation(session, task, prompts: list[str], answers: list[list[int]], acfg, model=None):
    """One `Attribution` per prompt of F (its answer's log-probability) to the prompt's words, in input order.

    `answers`: the target token ids per prompt (generated or reference). `model`: another model with the
    session's tokenizer (the sanity check's re-initialised copy).
    """
    import torch

    from lmreason.training.batching import sorted_batches

    model = session.model if model is None else model
    tokenizer, method = session.tokenizer, str(acfg.method)
    rows = _encode(session, task, prompts)
    lengths = np.array([len(r["ids"]) + len(a) for r, a in zip(rows, answers)])
    per_batch = (
        max(1, int(acfg.internal_batch_size) // max(1, int(acfg.n_steps)))
        if method == "integrated_gradients"
        else session.batch_size
    )
    out: list[Attribution | None] = [None] * len(prompts)
    with torch.inference_mode(False), torch.enable_grad():
        for batch in sorted_batches(lengths, per_batch):
            ids, mask, labels, baseline, first = _batch(
                [rows[i] for i in batch], [answers[i] for i in batch], tokenizer.pad_token_id, session.device
            )
            forward = _answer_logprob(model, first)
            with torch.no_grad():
                at_input = forward(ids, mask, labels)
                at_baseline = forward(baseline, mask, labels)
            if method == "occlusion":
                scores = torch.zeros(ids.shape)
            else:
                scores = _gradients(model, forward, (ids, baseline, mask, labels), acfg)
            change = (at_input - at_baseline).cpu()
            for row, i in enumerate(batch):
                n = len(rows[i]["ids"])
                token_scores = scores[row, :n].tolist()
                words, word_scores, spans = _prompt_words(rows[i], prompts[i], token_scores)
                empty = not answers[i]
                out[i] = Attribution(
                    label=tokenizer.decode(answers[i], skip_special_tokens=True).strip(),
                    confidence=float(np.exp(float(at_input[row]))),
                    tokens=tokenizer.convert_ids_to_tokens(rows[i]["ids"]),
                    token_scores=[float(v) for v in token_scores],
                    words=words,
                    scores=[float(v) for v in word_scores],
                    word_spans=spans,
                    delta=None if method == "occlusion" or empty else float(sum(token_scores) - change[row]),
                    logit_change=None if method == "occlusion" else float(change[row]),
                    method=method,
                    target_logprob=float(at_input[row]),
                    answer_tokens=tokenizer.convert_ids_to_tokens(list(answers[i])),
                )
    if method == "occlusion":
        _occlude(session, task, out, prompts, answers, model)
    return out


def _gradients(model, forward, tensors: tuple, acfg):
    """(B, T) token scores: Captum LIG over the input embeddings, or gradient x (embedding - baseline embedding)."""
    from captum.attr import LayerIntegratedGradients

    ids, baseline, mask, labels = tensors
    layer = model.get_input_embeddings()
    if str(acfg.method) == "integrated_gradients":
        attributions = LayerIntegratedGradients(forward, layer).attribute(
            ids,
            baselines=baseline,
            additional_forward_args=(mask, labels),
            n_steps=int(acfg.n_steps),
            internal_batch_size=int(acfg.internal_batch_size),
        )
    else:
        attributions = gradient_x_input(layer, lambda: forward(ids, mask, labels).sum(), baseline)
    return attributions.float().sum(dim=-1).detach().cpu()


def _prompt_words(row: dict, prompt: str, token_scores: list[float]) -> tuple[list, list, list]:
    """(words, scores, spans) of the user's prompt: token scores summed per pre-tokenizer word; a span is
    (0, start, end) in characters of the prompt, surrounding whitespace left out."""
    scores, spans, index = [], [], {}
    for pos, (w, (s, e), inside) in enumerate(zip(row["word_ids"], row["offsets"], row["in_prompt"])):
        if not inside:
            continue
        s, e = max(s, row["start"]) - row["start"], min(e, row["end"]) - row["start"]
        key = w if w is not None else ("token", pos)
        if key not in index:
            index[key] = len(scores)
            scores.append(0.0)
            spans.append([0, s, e])
        j = index[key]
        scores[j] += token_scores[pos]
        spans[j][1], spans[j][2] = min(spans[j][1], s), max(spans[j][2], e)
    for span in spans:  # byte-level pieces carry their leading space: the word is what is between
        while span[1] < span[2] and prompt[span[1]].isspace():
            span[1] += 1
        while span[2] > span[1] and prompt[span[2] - 1].isspace():
            span[2] -= 1
    keep = [j for j, (_, s, e) in enumerate(spans) if e > s]
    return (
        [prompt[spans[j][1] : spans[j][2]] for j in keep],
        [scores[j] for j in keep],
        [tuple(spans[j]) for j in keep],
    )


def _occlude(session, task, attributions: list[Attribution], prompts, answers, model) -> None:
    """Leave-one-word-out, in place: F(x) - F(x without the word), every variant in one batched call."""
    variants, owners = [], []
    for i, a in enumerate(attributions):
        for j in range(len(a.words)):
            variants.append(edit_text(prompts[i], None, a.word_spans, drop={j})[0])
            owners.append(i)
    if not variants:
        return
    values = answer_logprobs(session, task, variants, [answers[i] for i in owners], model)
    at = 0
    for a in attributions:
        a.scores = [float(a.target_logprob - v) for v in values[at : at + len(a.words)]]
        at += len(a.words)


def gen_faithfulness(session, task, attributions: list[Attribution], prompts, answers, acfg) -> dict:
    """AOPC comprehensiveness and sufficiency of the answer's log-probability (nats), attributions and random words."""
    from lmreason.evaluation.attribution import aopc, erasure_variants

    variants, owners = erasure_variants(attributions, prompts, None, list(acfg.k_percents), int(acfg.seed))
    if not variants:
        return aopc({}, list(acfg.k_percents), 0)
    values = answer_logprobs(session, task, [v[0] for v in variants], [answers[o[0]] for o in owners])
    drops: dict[tuple[int, str], list[float]] = {}
    for (i, ki, kind), v in zip(owners, values):
        drops.setdefault((ki, kind), []).append(attributions[i].target_logprob - float(v))
    return {
        **aopc(drops, list(acfg.k_percents), len({o[0] for o in owners})),
        "units": "nats of answer log-probability",
    }


def gen_sanity_check(session, task, attributions: list[Attribution], prompts, answers, acfg) -> dict:
    """Mean Spearman correlation of |word scores| between the trained decoder and its re-initialised copy."""
    clone = randomised_copy(session.model, int(acfg.seed))
    other = attribute_generation(session, task, prompts, answers, acfg, model=clone)
    rhos = [spearman(np.abs(a.scores), np.abs(b.scores)) for a, b in zip(attributions, other)]
    rhos = [r for r in rhos if r is not None]
    mean = float(np.mean(rhos)) if rhos else None
    return {"rank_correlation": mean, "n": len(rhos), "verdict": sanity_verdict(mean)}


def explain_generation_rows(session, task, rows: list[dict], prompts: list[str], acfg) -> list[Attribution]:
    """infer explain=true on a task=gen model: the attribution fields added to infer's rows (in place), each row's
    `answer_ids` (the generated tokens, from `infer_answers(with_ids=True)`) replaced by `answer_tokens`."""
    answers = [row.pop("answer_ids") for row in rows]
    attributions = attribute_generation(session, task, prompts, answers, acfg)
    for row, a in zip(rows, attributions):
        record = a.as_record()
        for key in ("tokens", "token_scores", "words", "scores", "delta", "logit_change", "method"):
            row[key] = record[key]
        row["target_logprob"], row["answer_tokens"] = a.target_logprob, a.answer_tokens
    return attributions


def select_answers(scores: np.ndarray, errors: int, correct: int, seed: int) -> list[tuple[int, str]]:
    """(row, group): `errors` wrong answers (score < 1 by the task's scorer) and `correct` right ones, each a seeded
    draw in split order (a generated answer has no single confidence to rank errors by)."""
    rng = np.random.default_rng(seed)
    wrong, right = np.flatnonzero(scores < 1.0), np.flatnonzero(scores >= 1.0)
    wrong = np.sort(rng.permutation(wrong)[:errors])
    right = np.sort(rng.permutation(right)[:correct])
    return [(int(i), "error") for i in wrong] + [(int(i), "correct") for i in right]


def gen_attribution_of_split(session, task, request, acfg) -> tuple[dict, list[dict]]:
    """(eval/<split>/attribution.json payload, attributions.jsonl records) of one task=gen split: the answers
    evaluate generated for it (`request.generated`), or the references with target=reference."""
    import time

    from lmreason.evaluation.attribution import delta_summary

    dataset = request.dataset
    generated = request.generated
    chosen = select_answers(np.asarray(generated["scores"]), int(acfg.errors), int(acfg.correct), int(acfg.seed))
    rows = [i for i, _ in chosen]
    prompts = [dataset["prompt"][i] for i in rows]
    references = [dataset["completion"][i] for i in rows]
    target = str(acfg.target)
    answers = (
        reference_ids(session.tokenizer, references)
        if target == "reference"
        else [list(generated["ids"][i]) for i in rows]
    )
    began = time.perf_counter()
    attributions = attribute_generation(session, task, prompts, answers, acfg)
    seconds = time.perf_counter() - began
    records = [
        {
            "row": i,
            "group": group,
            "text": prompts[k],
            "reference": references[k],
            "target": target,
            "score": float(generated["scores"][i]),
            **a.as_record(),
        }
        for k, ((i, group), a) in enumerate(zip(chosen, attributions))
    ]
    payload = {
        "split": request.name,
        "task": "gen",
        "method": str(acfg.method),
        "n_steps": int(acfg.n_steps),
        "target": target,
        "examples": {"error": sum(g == "error" for _, g in chosen), "correct": sum(g == "correct" for _, g in chosen)},
        "attribution_seconds": seconds,
        "delta": delta_summary(attributions, acfg),
        "faithfulness": gen_faithfulness(session, task, attributions, prompts, answers, acfg),
        "sanity_check": gen_sanity_check(session, task, attributions, prompts, answers, acfg)
        if acfg.sanity_check
        else None,
        "leaned_on": {},  # words per predicted label: a classifier's table (answers are not labels)
    }
    return payload, records
