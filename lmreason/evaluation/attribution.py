"""Which words a classifier's prediction rests on: attributions, their faithfulness, and a sanity check.

`attribute(session, texts, pairs, acfg)` gives one `Attribution` per input, toward the predicted label:
  integrated_gradients  Captum's LayerIntegratedGradients on the word-embedding layer (Sundararajan et
                        al. 2017). Baseline: the same sequence with every non-special token replaced by
                        the pad token (its embedding; [CLS]/[SEP] kept), same attention mask. `n_steps`
                        interpolation points, `internal_batch_size` of them (over all inputs of a batch)
                        per forward pass. Completeness: the token scores sum to logit(x) - logit(baseline)
                        of the target label, up to `delta` (Captum's convergence delta); a |delta| above
                        `delta_warning` x |logit change| is reported (raise n_steps).
  gradient_x_input      one backward pass: gradient of the target logit x (embedding - pad embedding)
                        (IG with a single right Riemann step); delta is its completeness error.
  occlusion             leave-one-word-out: the drop of the predicted label's probability when the word is
                        deleted from the text (classify_texts, batched); units are probability, no delta.
Token scores are summed into word scores (the tokenizer's word_ids / offsets: a word is what the
tokenizer's pre-tokenizer splits, punctuation included). Gradients are taken in fp32 outside
`inference_mode` (which would block them); the [CLS]-only fast path keeps every position's embedding
in the graph (earlier layers and the last layer's keys/values see all positions).

`faithfulness(...)` (ERASER, DeYoung et al. 2020): comprehensiveness = p(y|x) - p(y|x without the top-k%
words), sufficiency = p(y|x) - p(y|only the top-k% words), averaged over k (AOPC), each beside the same
figure for the same number of randomly chosen words (seeded). evaluate's `diagnostics=attribution` runs
per split from lmreason.evaluation.attribution_run; task=gen attributions are in gen_attribution.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from lmreason.errors import UserError

log = logging.getLogger(__name__)

METHODS = ("integrated_gradients", "gradient_x_input", "occlusion")


# ------------------------------------------------------------------ config
def check_config(acfg, key: str = "attribution") -> None:
    """Bad settings as one line, before any model is loaded.

    Raises:
        UserError: n_steps or the batch size < 1, a negative warning threshold or count, k outside (0, 100].
    """
    if str(acfg.method) not in METHODS:
        raise UserError(f"{key}.method={acfg.method}: unknown method; known: {', '.join(METHODS)}")
    if acfg.n_steps is None or acfg.n_steps < 1:
        raise UserError(
            f"{key}.n_steps={acfg.n_steps}: must be >= 1 "
            "(interpolation steps of integrated gradients; 32 is a good start)"
        )
    if acfg.internal_batch_size is None or acfg.internal_batch_size < 1:
        raise UserError(
            f"{key}.internal_batch_size={acfg.internal_batch_size}: must be >= 1 "
            "(interpolation points per forward pass)"
        )
    if acfg.delta_warning is None or acfg.delta_warning < 0:
        raise UserError(f"{key}.delta_warning={acfg.delta_warning}: must be >= 0 (share of the logit change)")
    for name in ("errors", "correct", "top_words", "min_word_count"):
        if name in acfg and (acfg[name] is None or acfg[name] < 0):
            raise UserError(f"{key}.{name}={acfg[name]}: must be >= 0")
    if "k_percents" in acfg:
        bad = [k for k in acfg.k_percents if not 0 < k <= 100]
        if bad or not acfg.k_percents:
            raise UserError(
                f"{key}.k_percents={list(acfg.k_percents)}: give percentages in (0, 100], e.g. [5,10,20,50]"
            )


# ------------------------------------------------------------------ attributions
@dataclass
class Attribution:
    """One input's attribution toward `label` (the predicted one)."""

    label: str
    confidence: float  # p(label | x)
    tokens: list[str]  # the model's tokens, special ones included
    token_scores: list[float]  # one per token (0 for special tokens with IG: they equal the baseline)
    words: list[str]  # word surfaces, in order (of the text, then of the pair)
    scores: list[float]  # one per word: the sum of its pieces' scores
    word_spans: list[tuple[int, int, int]] = field(default_factory=list)  # (sequence 0|1, start, end) char offsets
    delta: float | None = None  # sum of token scores - logit change (None: occlusion)
    logit_change: float | None = None  # target logit at x minus at the baseline
    method: str = "integrated_gradients"
    target_logprob: float | None = None  # task=gen: log p(answer | prompt), the explained quantity
    answer_tokens: list[str] | None = None  # task=gen: the answer's tokens (generated or reference)

    def as_record(self) -> dict:
        row = asdict(self)
        row["word_spans"] = [list(s) for s in self.word_spans]
        for key in ("target_logprob", "answer_tokens"):  # task=gen only
            if row[key] is None:
                del row[key]
        return row


def attribute(
    session, texts: list[str], pairs: list[str] | None, acfg, targets: list[int] | None = None, model=None
) -> list[Attribution]:
    """Attributions for raw texts (or pairs) toward the predicted label (or `targets`), in input order.

    `model`: another model with the session's tokenizer (the sanity check's re-initialised copy).
    Raises:
        UserError: the tokenizer is not a fast tokenizer (no word offsets).
    """
    import torch

    from lmreason.evaluation.loading import label_names_of

    model = session.model if model is None else model
    tokenizer = session.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            "attributions need a fast (Rust) tokenizer for word offsets; this checkpoint's tokenizer is a slow one"
        )
    names = label_names_of(session.model)
    encoded = tokenizer(
        texts,
        pairs,
        truncation=True,
        max_length=session.max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    method = str(acfg.method)
    out: list[Attribution | None] = [None] * len(texts)
    keys = [k for k in ("input_ids", "token_type_ids") if k in encoded]
    lengths = np.array([len(ids) for ids in encoded["input_ids"]])
    # examples per IG batch: n_steps copies of each go through the model, internal_batch_size at a time
    per_batch = (
        max(1, int(acfg.internal_batch_size) // max(1, int(acfg.n_steps)))
        if method == "integrated_gradients"
        else session.batch_size
    )
    from lmreason.training.batching import sorted_batches

    with torch.inference_mode(False), torch.enable_grad():
        for batch in sorted_batches(lengths, per_batch):
            batch = list(batch)
            padded = tokenizer.pad(
                {k: [encoded[k][i] for i in batch] for k in keys},
                padding_side="right",
                return_attention_mask=True,
                return_tensors="pt",
            )
            special = torch.zeros_like(padded["input_ids"], dtype=torch.bool)
            for row, i in enumerate(batch):
                mask = encoded["special_tokens_mask"][i]
                special[row, : len(mask)] = torch.tensor(mask, dtype=torch.bool)
            special |= padded["attention_mask"] == 0  # padding stays padding
            inputs = {k: v.to(session.device) for k, v in padded.items()}
            with torch.no_grad():
                logits = model(**inputs).logits.float()  # (B, C)
            probs = torch.softmax(logits, dim=-1)
            target = (
                logits.argmax(-1)
                if targets is None
                else torch.tensor([targets[i] for i in batch], device=logits.device)
            )
            if method == "occlusion":
                token_scores = torch.zeros(padded["input_ids"].shape)  # filled per word below
                delta = change = [None] * len(batch)
            else:
                at_input = logits.gather(1, target[:, None])[:, 0]
                token_scores, delta, change = _integrated_gradients(
                    model, inputs, (special.to(session.device), at_input), target, tokenizer.pad_token_id, acfg
                )
            for row, i in enumerate(batch):
                t = int(target[row])
                n = int(lengths[i])
                scores = token_scores[row, :n].tolist()
                words, word_scores, spans = _word_scores(
                    encoded.encodings[i], texts[i], pairs[i] if pairs else None, scores
                )
                out[i] = Attribution(
                    label=names[t],
                    confidence=float(probs[row, t]),
                    tokens=tokenizer.convert_ids_to_tokens(encoded["input_ids"][i]),
                    token_scores=[float(v) for v in scores],
                    words=words,
                    scores=[float(v) for v in word_scores],
                    word_spans=[tuple(span) for span in spans],
                    delta=None if delta[row] is None else float(delta[row]),
                    logit_change=None if change[row] is None else float(change[row]),
                    method=method,
                )
    if method == "occlusion":
        _occlude(session, out, texts, pairs, [names.index(a.label) for a in out], model)
    return out


def _integrated_gradients(model, inputs: dict, special_and_logit: tuple, target, pad_id: int, acfg):
    """(token scores (B, T), delta per example, logit change per example) by Captum LIG (or gradient x input).

    `special_and_logit`: (special-token mask (B, T), the target logit at the input, already computed by the
    caller). Completeness is checked here with one forward pass at the baseline, not by Captum's
    `return_convergence_delta` (two more full forward passes, one of them at the input again).
    """
    import torch
    from captum.attr import LayerIntegratedGradients

    special, at_input = special_and_logit
    input_ids = inputs["input_ids"]
    baseline = torch.where(special, input_ids, torch.full_like(input_ids, pad_id))  # (B, T)
    extra = tuple(inputs[k] for k in ("attention_mask", "token_type_ids") if k in inputs)
    names = [k for k in ("attention_mask", "token_type_ids") if k in inputs]

    def forward(ids, *args):
        return model(input_ids=ids, **dict(zip(names, args))).logits.float()

    if str(acfg.method) == "integrated_gradients":
        lig = LayerIntegratedGradients(forward, model.get_input_embeddings())
        attributions = lig.attribute(
            input_ids,
            baselines=baseline,
            target=target,
            additional_forward_args=extra,
            n_steps=int(acfg.n_steps),
            internal_batch_size=int(acfg.internal_batch_size),
        )
    else:  # gradient x (input - baseline) at the input: one forward and one backward pass
        attributions = _gradient_x_input(model, forward, input_ids, baseline, extra, target)
    scores = attributions.float().sum(dim=-1).detach().cpu()  # (B, T): summed over the embedding dimension
    with torch.no_grad():
        at_baseline = forward(baseline, *extra).gather(1, target[:, None])[:, 0]
    change = (at_input - at_baseline).cpu()
    delta = scores.sum(dim=1) - change  # completeness error (Captum's convergence delta, same definition)
    return scores, [float(d) for d in delta], change.tolist()


def _gradient_x_input(model, forward, input_ids, baseline, extra, target):
    """(B, T, d): d logit[target] / d embedding x (embedding - baseline embedding)."""
    return gradient_x_input(
        model.get_input_embeddings(),
        lambda: forward(input_ids, *extra).gather(1, target[:, None]).sum(),
        baseline,
    )


def gradient_x_input(layer, objective, baseline):
    """(B, T, d): d objective() / d embedding x (embedding - embedding of `baseline` ids), the embedding taken
    from the output of `layer` (the model's input embeddings) through a forward hook. `objective` runs the
    model and returns the scalar to differentiate; classification and generation attribution both use it."""
    import torch

    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["embedding"] = output

    handle = layer.register_forward_hook(keep)
    try:
        value = objective()
    finally:
        handle.remove()
    value.backward()
    embedding = captured["embedding"]
    with torch.no_grad():
        return embedding.grad * (embedding - layer(baseline))


def _word_scores(enc, text: str, pair: str | None, token_scores: list[float]) -> tuple[list, list, list]:
    """(words, scores, spans): token scores summed over each word's pieces (word_ids and sequence ids of the
    fast tokenizer's encoding `enc`); a span is [sequence 0|1, start, end] in characters."""
    word_ids, seq_ids, offsets = enc.word_ids, enc.sequence_ids, enc.offsets
    scores, spans, index = [], [], {}
    for pos, (w, s) in enumerate(zip(word_ids, seq_ids)):
        if w is None or s is None:
            continue
        key = (s, w)
        start, end = offsets[pos]
        if key not in index:
            index[key] = len(scores)
            scores.append(0.0)
            spans.append([s, start, end])
        j = index[key]
        scores[j] += token_scores[pos]
        spans[j][1], spans[j][2] = min(spans[j][1], start), max(spans[j][2], end)
    words = [(text if s == 0 else pair)[start:end] for s, start, end in spans]
    return words, scores, spans


def _occlude(session, attributions: list[Attribution], texts, pairs, targets: list[int], model) -> None:
    """Leave-one-word-out scores, in place: p(y|x) - p(y|x without the word), all variants in one batched call."""
    variants, owners = [], []
    for i, a in enumerate(attributions):
        for j in range(len(a.words)):
            variants.append(edit_text(texts[i], pairs[i] if pairs else None, a.word_spans, drop={j}))
            owners.append((i, j))
    if not variants:
        return
    probs = _classify(session, [v[0] for v in variants], [v[1] for v in variants] if pairs else None, model)
    for (i, j), p in zip(owners, probs):
        a = attributions[i]
        a.scores[j] = float(a.confidence - p[targets[i]])


def _classify(session, texts, pairs, model=None):
    from dataclasses import replace

    from lmreason.evaluation.predict import classify_texts

    return classify_texts(session if model is None else replace(session, model=model), texts, pairs)


def edit_text(text: str, pair: str | None, spans, drop: set[int] | None = None, keep: set[int] | None = None):
    """(text, pair) with the words `drop` deleted (everything else, spacing included, as it was), or with only the
    words `keep`, each with the whitespace that precedes it in the text (a byte-level BPE tokenizer, GPT-2's or
    SmolLM2's, spells " great" and "great" as different tokens: a kept word keeps its own). Text beyond the words
    (truncated away) is dropped when keeping."""
    sources = [text, pair]
    result = []
    for seq in (0, 1):
        source = sources[seq]
        if source is None:
            result.append(None)
            continue
        mine = [(j, s, e) for j, (q, s, e) in enumerate(spans) if q == seq]
        if keep is not None:
            kept = [source[:s][len(source[:s].rstrip()) :] + source[s:e] for j, s, e in mine if j in keep]
            result.append("".join(kept))
            continue
        pieces, at = [], 0
        for j, s, e in mine:
            if j in drop:
                pieces.append(source[at:s])
                at = e
        pieces.append(source[at:])
        result.append("".join(pieces))
    return result[0], result[1]


# ------------------------------------------------------------------ faithfulness (ERASER)
def erasure_variants(attributions: list[Attribution], texts, pairs, k_percents, seed: int) -> tuple[list, list]:
    """(variants, owners): per example and k, the text without / with only its top-k% words and as many random
    words (seeded); owner = (example, k index, kind), kind in comp, rcomp, suff, rsuff."""
    rng = np.random.default_rng(seed)
    variants, owners = [], []
    for i, a in enumerate(attributions):
        n = len(a.words)
        if n == 0:
            continue
        order = list(np.argsort(-np.asarray(a.scores), kind="stable"))
        shuffled = list(rng.permutation(n))
        for ki, k in enumerate(k_percents):
            m = max(1, math.ceil(k / 100 * n))
            top, rand = set(int(j) for j in order[:m]), set(int(j) for j in shuffled[:m])
            for kind, chosen in (("comp", top), ("rcomp", rand)):
                variants.append(edit_text(texts[i], pairs[i] if pairs else None, a.word_spans, drop=chosen))
                owners.append((i, ki, kind))
            for kind, chosen in (("suff", top), ("rsuff", rand)):
                variants.append(edit_text(texts[i], pairs[i] if pairs else None, a.word_spans, keep=chosen))
                owners.append((i, ki, kind))
    return variants, owners


FIGURES = (
    ("comprehensiveness", "comp"),
    ("sufficiency", "suff"),
    ("random_comprehensiveness", "rcomp"),
    ("random_sufficiency", "rsuff"),
)


def aopc(drops: dict, k_percents, n: int) -> dict:
    """The four figures averaged over k (AOPC) from drops[(k index, kind)] = [drop per example], and per k."""
    result = {"n": n, "k_percents": [float(k) for k in k_percents]}
    if not drops:
        return {**result, **{figure: None for figure, _ in FIGURES}, "per_k": {}}
    per_k = {
        str(k): {figure: float(np.mean(drops[(ki, short)])) for figure, short in FIGURES}
        for ki, k in enumerate(k_percents)
    }
    for figure, _ in FIGURES:
        result[figure] = float(np.mean([v[figure] for v in per_k.values()]))
    result["per_k"] = per_k
    return result


def faithfulness(session, attributions: list[Attribution], texts, pairs, k_percents, seed: int, model=None) -> dict:
    """AOPC comprehensiveness and sufficiency of the attributions and of random word choices (seeded).

    Words are ranked by their score toward the predicted label (highest first); top-k% = ceil(k/100 x words),
    at least one. Every deleted / kept-only variant is classified in one batched call.
    Returns {comprehensiveness, sufficiency, random_comprehensiveness, random_sufficiency, per_k: {k: {...}}, n}.
    """
    from lmreason.evaluation.loading import label_names_of

    variants, owners = erasure_variants(attributions, texts, pairs, k_percents, seed)
    if not variants:
        return aopc({}, k_percents, 0)
    names = label_names_of(session.model)
    probs = _classify(session, [v[0] for v in variants], [v[1] for v in variants] if pairs else None, model)
    drops: dict[tuple[int, str], list[float]] = {}
    for (i, ki, kind), p in zip(owners, probs):
        a = attributions[i]
        drops.setdefault((ki, kind), []).append(a.confidence - float(p[names.index(a.label)]))
    return aopc(drops, k_percents, len({o[0] for o in owners}))


# ------------------------------------------------------------------ sanity check (Adebayo et al. 2018)
def randomised_copy(model, seed: int):
    """The same architecture with its encoder (everything but the classification head) re-initialised."""
    import copy

    import torch

    clone = copy.deepcopy(model)
    torch.manual_seed(seed)
    for module in clone.base_model.modules():  # the head (classifier) keeps its trained weights
        clone._init_weights(module)
    return clone.eval()


def spearman(a, b) -> float | None:
    """Spearman rank correlation (average ranks for ties); None when either side is constant or shorter than 2."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2:
        return None

    def ranks(x):
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # ties: their mean rank
            where = x == value
            r[where] = r[where].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def sanity_check(session, attributions: list[Attribution], texts, pairs, acfg, seed: int) -> dict:
    """Mean Spearman correlation of |word scores| (toward the same labels) between the trained model and its
    re-initialised copy. High (say > 0.5): the attributions follow the input's form more than what was learned."""
    from lmreason.evaluation.loading import label_names_of

    names = label_names_of(session.model)
    clone = randomised_copy(session.model, seed)
    targets = [names.index(a.label) for a in attributions]
    other = attribute(session, texts, pairs, acfg, targets=targets, model=clone)
    rhos = [spearman(np.abs(a.scores), np.abs(b.scores)) for a, b in zip(attributions, other)]
    rhos = [r for r in rhos if r is not None]
    mean = float(np.mean(rhos)) if rhos else None
    return {"rank_correlation": mean, "n": len(rhos), "verdict": sanity_verdict(mean)}


def sanity_verdict(mean: float | None) -> str | None:
    if mean is None:
        return None
    if mean > 0.5:
        return "high: the attributions barely depend on what the model learned (they may reflect the input's form)"
    return "low: the attributions depend on the trained weights (passes the model-randomisation check)"


# ------------------------------------------------------------------ infer explain=true
def explain_rows(session, rows: list[dict], texts, pairs, acfg) -> list[Attribution]:
    """Add tokens, token_scores, words, scores, delta, logit_change, method to infer's rows (in place)."""
    attributions = attribute(session, texts, pairs, acfg)
    for row, a in zip(rows, attributions):
        record = a.as_record()
        for key in ("tokens", "token_scores", "words", "scores", "delta", "logit_change", "method"):
            row[key] = record[key]
    return attributions


def large_deltas(attributions: list[Attribution], threshold: float) -> list[int]:
    """Indices whose |delta| exceeds `threshold` x |logit change| (IG did not converge: more n_steps)."""
    return [
        i
        for i, a in enumerate(attributions)
        if a.delta is not None
        and a.logit_change is not None
        and abs(a.delta) > threshold * max(abs(a.logit_change), 1e-6)
    ]


def delta_warning(attributions: list[Attribution], threshold: float, key: str = "attribution") -> str | None:
    bad = large_deltas(attributions, threshold)
    if not bad:
        return None
    worst = max(bad, key=lambda i: abs(attributions[i].delta) / max(abs(attributions[i].logit_change), 1e-6))
    a = attributions[worst]
    return (
        f"warning: {len(bad)} of {len(attributions)} attributions miss completeness "
        f"by more than {threshold:.0%} of the logit change "
        f"(worst: delta {a.delta:+.4f} for a change of {a.logit_change:+.4f}); raise {key}.n_steps"
    )


def coloured_words(words: list[str], scores: list[float]):
    """A rich Text: each word green (toward the label) or red (against it), brighter the larger |score|."""
    from rich.text import Text

    text = Text()
    top = max((abs(s) for s in scores), default=0.0) or 1.0
    for j, (w, s) in enumerate(zip(words, scores)):
        strength = abs(s) / top
        colour = (0, int(90 + 165 * strength), 0) if s >= 0 else (int(90 + 165 * strength), 0, 0)
        style = f"bold white on rgb({colour[0]},{colour[1]},{colour[2]})" if strength >= 0.1 else "dim"
        if j:
            text.append(" ")
        text.append(w, style=style)
    return text


def print_explanations(rows: list[dict], console, shown: int) -> None:
    """Per input: the label and confidence (task=gen: the answer and its log-probability), then its words coloured by
    score, then the top words with their values."""
    from rich.markup import escape

    for row in rows[:shown]:
        delta = (
            ""
            if row.get("delta") is None
            else f", delta {row['delta']:+.2e} of logit change {row['logit_change']:+.4f}"
        )
        if "label" in row:
            console.print(f"[bold]{row['label']}[/] ({row['confidence']:.3f}; {row['method']}{delta})")
        else:  # task=gen: the words of the prompt toward the generated answer's log-probability
            console.print(
                f"answer [bold]{escape(row['generated'])}[/] "
                f"(log p {row['target_logprob']:+.3f}; {row['method']}{delta})"
            )
        console.print(coloured_words(row["words"], row["scores"]))
        order = sorted(range(len(row["words"])), key=lambda j: -abs(row["scores"][j]))[:5]
        console.print("  top: " + ", ".join(f"{row['words'][j]} {row['scores'][j]:+.3g}" for j in order))
    if rows and "label" not in rows[0]:
        console.print(
            "[dim]green: raises the answer's log-probability, red: lowers it (nats; occlusion: its drop when the "
            "word is deleted)[/]"
        )
        return
    console.print(
        "[dim]green: toward the predicted label, red: against it (integrated gradients / gradient x input: "
        "logit units; occlusion: probability drop)[/]"
    )


# ------------------------------------------------------------------ evaluate diagnostics=attribution
def select_examples(gold: np.ndarray, probs: np.ndarray, errors: int, correct: int, seed: int) -> list[tuple[int, str]]:
    """(row, group): the `errors` most confident errors, then `correct` correct rows drawn at random (seeded)."""
    predicted, confidence = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(predicted != gold)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:errors]
    right = np.flatnonzero(predicted == gold)
    right = np.sort(np.random.default_rng(seed).permutation(right)[:correct])
    return [(int(i), "error") for i in wrong] + [(int(i), "correct") for i in right]


WORD = __import__("re").compile(r"\w+", __import__("re").UNICODE)


def label_association(texts: list[str], labels: list[str]) -> dict:
    """Per lower-cased word: its count (examples containing it) and PMI log p(label|word)/p(label) per label,
    add-one smoothed, over a (training) split."""
    names = sorted(set(labels))
    prior = {y: labels.count(y) / len(labels) for y in names}
    counts: dict[str, dict[str, int]] = {}
    for text, y in zip(texts, labels):
        for w in set(m.group().lower() for m in WORD.finditer(text)):
            counts.setdefault(w, {}).setdefault(y, 0)
            counts[w][y] += 1
    table = {}
    for w, by_label in counts.items():
        total = sum(by_label.values())
        table[w] = {
            "count": total,
            "pmi": {y: math.log(((by_label.get(y, 0) + 1) / (total + len(names))) / prior[y]) for y in names},
        }
    return table


def surface_flag(word: str, starts_text: bool) -> str | None:
    """A heuristic for words that should carry no task meaning: a number, a capitalised name, formatting."""
    if any(c.isdigit() for c in word):
        return "number"
    if not any(c.isalnum() for c in word):
        return "formatting"
    if word[:1].isupper() and not starts_text:
        return "name?"
    return None


def leaned_on(records: list[dict], train: dict | None, top: int, min_count: int) -> dict:
    """Per predicted label: the `top` words (seen in >= min_count attributed examples) by mean score toward it,
    with their training PMI with that label and a surface flag."""
    sums: dict[tuple[str, str], list[float]] = {}
    flags: dict[str, str | None] = {}
    for r in records:
        for j, (w, s) in enumerate(zip(r["words"], r["scores"])):
            key = (r["label"], w.lower())
            sums.setdefault(key, []).append(s)
            flag = surface_flag(w, starts_text=j == 0)
            flags[w.lower()] = flags.get(w.lower()) or flag
    result: dict[str, list[dict]] = {}
    for (label, w), values in sums.items():
        if len(values) < min_count:
            continue
        entry = {"word": w, "mean_score": float(np.mean(values)), "examples": len(values), "flag": flags.get(w)}
        if train is not None:
            known = train.get(w)
            entry["train_count"] = known["count"] if known else 0
            entry["train_pmi"] = known["pmi"].get(label) if known else None
            if known is None:
                entry["flag"] = entry["flag"] or "unseen in training"
            elif entry["mean_score"] > 0 and entry["train_pmi"] is not None and abs(entry["train_pmi"]) < 0.05:
                entry["flag"] = entry["flag"] or "no label signal in training"
        result.setdefault(label, []).append(entry)
    return {label: sorted(rows, key=lambda e: -e["mean_score"])[:top] for label, rows in sorted(result.items())}


def attribution_of_split(session, request, acfg, train_association: dict | None) -> tuple[dict, list[dict]]:
    """(eval/<split>/attribution.json payload, attributions.jsonl records) of one classification split."""
    import time

    from lmreason.evaluation.loading import label_names_of
    from lmreason.evaluation.predict import classify_texts

    dataset = request.dataset
    model_labels = label_names_of(session.model)
    texts = list(dataset["text"])
    pairs = list(dataset["text_pair"]) if "text_pair" in dataset.column_names else None
    gold = np.array([model_labels.index(request.label_names[label]) for label in dataset["labels"]])
    probs = classify_texts(session, texts, pairs)
    chosen = select_examples(gold, probs, int(acfg.errors), int(acfg.correct), int(acfg.seed))
    rows = [i for i, _ in chosen]
    sel_texts, sel_pairs = [texts[i] for i in rows], [pairs[i] for i in rows] if pairs else None
    began = time.perf_counter()
    attributions = attribute(session, sel_texts, sel_pairs, acfg)
    seconds = time.perf_counter() - began
    records = []
    for (i, group), a in zip(chosen, attributions):
        row = {"row": i, "group": group, "text": texts[i], "gold": model_labels[gold[i]]}
        if pairs:
            row["text_pair"] = pairs[i]
        records.append({**row, **a.as_record()})
    payload = {
        "split": request.name,
        "method": str(acfg.method),
        "n_steps": int(acfg.n_steps),
        "examples": {"error": sum(g == "error" for _, g in chosen), "correct": sum(g == "correct" for _, g in chosen)},
        "attribution_seconds": seconds,
    }
    payload["delta"] = delta_summary(attributions, acfg)
    payload["faithfulness"] = faithfulness(
        session, attributions, sel_texts, sel_pairs, list(acfg.k_percents), int(acfg.seed)
    )
    for group in ("error", "correct"):
        keep = [k for k, (_, g) in enumerate(chosen) if g == group]
        if keep:
            payload["faithfulness"][group] = {
                k: v
                for k, v in faithfulness(
                    session,
                    [attributions[k] for k in keep],
                    [sel_texts[k] for k in keep],
                    [sel_pairs[k] for k in keep] if sel_pairs else None,
                    list(acfg.k_percents),
                    int(acfg.seed),
                ).items()
                if k != "per_k"
            }
    payload["sanity_check"] = (
        sanity_check(session, attributions, sel_texts, sel_pairs, acfg, int(acfg.seed)) if acfg.sanity_check else None
    )
    payload["leaned_on"] = leaned_on(records, train_association, int(acfg.top_words), int(acfg.min_word_count))
    return payload, records


def delta_summary(attributions: list[Attribution], acfg) -> dict:
    """Completeness over a split: mean |delta|, mean |delta| / |change|, how many exceed the warning threshold."""
    ratios = [abs(a.delta) / max(abs(a.logit_change), 1e-6) for a in attributions if a.delta is not None]
    return {
        "mean_abs": float(np.mean([abs(a.delta) for a in attributions if a.delta is not None])) if ratios else None,
        "mean_relative": float(np.mean(ratios)) if ratios else None,
        "over_threshold": len(large_deltas(attributions, float(acfg.delta_warning))),
        "warning": delta_warning(attributions, float(acfg.delta_warning), key="diagnostics.attribution"),
    }


def faithfulness_table(results: dict):
    """Figures x splits: each attribution figure next to the random-words figure."""
    from rich.table import Table

    table = Table(
        title="attribution faithfulness (ERASER AOPC over k% of words)",
        title_justify="left",
        caption_justify="left",
        caption="comprehensiveness: probability drop when the top words are removed (higher = more faithful); "
        "sufficiency: drop when only they are kept (lower = more faithful); random: the same number of random words"
        + (
            "; task=gen: drops of the answer's log-probability (nats), |delta| relative to its change"
            if any(p.get("task") == "gen" for p in results.values())
            else ""
        ),
    )
    table.add_column("figure", style="bold")
    for split in results:
        table.add_column(f"{split}", justify="right")
        table.add_column(f"{split} random", justify="right")

    def fmt(v):
        return "—" if v is None else f"{v:.3f}"

    for figure, better in (("comprehensiveness", 1), ("sufficiency", -1)):
        cells = []
        for payload in results.values():
            f = payload["faithfulness"]
            mine, rand = f.get(figure), f.get(f"random_{figure}")
            good = mine is not None and rand is not None and (mine - rand) * better > 0
            cells += [f"[{'green' if good else 'red'}]{fmt(mine)}[/]", fmt(rand)]
        table.add_row(figure, *cells)
    cells = []
    for payload in results.values():
        s = payload.get("sanity_check") or {}
        cells += [fmt(s.get("rank_correlation")), ""]
    table.add_row("rank corr. vs random encoder", *cells)
    cells = []
    for payload in results.values():
        cells += [fmt(payload["delta"]["mean_relative"]), ""]
    table.add_row("|delta| / |logit change|", *cells)
    return table


def leaned_on_table(split: str, leaned: dict):
    from rich.table import Table

    table = Table(
        title=f"what the model leans on ({split}): words by mean attribution toward the predicted label",
        title_justify="left",
        caption_justify="left",
        caption="train PMI: log p(label|word)/p(label) in the training split "
        "(~0: the word carries no label signal there); flags are heuristics",
    )
    for name, justify in (
        ("label", "left"),
        ("word", "left"),
        ("mean score", "right"),
        ("examples", "right"),
        ("train PMI", "right"),
        ("flag", "left"),
    ):
        table.add_column(name, justify=justify)
    for label, rows in leaned.items():
        for e in rows:
            pmi = e.get("train_pmi")
            table.add_row(
                label,
                e["word"],
                f"{e['mean_score']:+.3g}",
                str(e["examples"]),
                "—" if pmi is None else f"{pmi:+.2f}",
                f"[yellow]{e['flag']}[/]" if e.get("flag") else "",
            )
    return table
