"""What `infer` does with a model: a label and probabilities per text, or a generated answer per prompt."""

from __future__ import annotations

from lmreason.errors import UserError
from lmreason.evaluation.predict import InferenceSession, classify_texts


def infer_labels(
    session: InferenceSession, texts: list[str], pairs: list[str] | None, temperature: float = 1.0
) -> list[dict]:
    """{text, [text_pair], label, confidence, probs, temperature} per input, in input order; probabilities are
    softmax(logits / temperature) (a fitted calibration temperature; 1.0: the raw ones), and each row says
    which temperature, so a predictions file read later tells calibrated probabilities from raw ones."""
    from lmreason.evaluation.loading import label_names_of

    names = label_names_of(session.model)
    probs = classify_texts(session, texts, pairs, temperature)
    results = []
    for i, text in enumerate(texts):
        row = {"text": text}
        if pairs is not None:
            row["text_pair"] = pairs[i]
        best = int(probs[i].argmax())
        row.update(
            {
                "label": names[best],
                "confidence": float(probs[i, best]),
                "probs": {name: float(p) for name, p in zip(names, probs[i])},
                "temperature": float(temperature),
            }
        )
        results.append(row)
    return results


def infer_answers(
    session: InferenceSession, task, texts: list[str], pairs: list[str] | None, stream: bool, with_ids: bool = False
) -> list[dict]:
    """{text, generated, finished} per prompt, in input order. `stream`: print the (single) answer
    token by token as it is generated; `with_ids`: also `answer_ids`, the generated token ids (what
    explain=true attributes).

    Raises:
        UserError: sentence pairs given to a generation model.
    """
    from lmreason.evaluation.generation import decode_answers, generate_ids

    if pairs is not None:
        raise UserError(
            "text_pair_column is for sentence-pair classification; a generation prompt is one text "
            "(set text_pair_column=null)"
        )
    prompts = task.encode_prompts(session.tokenizer, texts, session.max_length)
    streamer = None
    if stream:
        from transformers import TextStreamer

        streamer = TextStreamer(session.tokenizer, skip_prompt=True, skip_special_tokens=True)
    ids, finished = generate_ids(
        session.model, session.tokenizer, prompts, session.generation, session.device, session.precision, streamer
    )
    rows = [
        {"text": text, "generated": out, "finished": done}
        for text, out, done in zip(texts, decode_answers(session.tokenizer, ids), finished)
    ]
    if with_ids:
        for row, answer in zip(rows, ids):
            row["answer_ids"] = answer
    return rows
