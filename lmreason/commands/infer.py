"""`lmreason infer`: labels and class probabilities (or generated answers) for texts or a file."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from lmreason.commands.entry import hydra_command
from lmreason.errors import UserError
from lmreason.validation import validate


def read_inputs(cfg: DictConfig) -> tuple[list[str], list[str] | None]:
    """Texts (and optional pairs) from `text=` or `input=`, each exactly as given.

    `text=` is one text or a list (the CLI turns each `text=...` a user types, repeated or not, into a quoted
    override: commas, quotes, `=`, newlines, `${` are text). `input=-` reads stdin and a .txt file is read
    as one text per line (split on newlines only; blank lines are skipped).

    Raises:
        UserError: neither or both given, an unreadable file, a missing text column, an empty text.
    """
    import sys

    from lmreason.data.files import detect_format, read_table, read_text

    def _lines(content: str) -> list[str]:  # newlines only: str.splitlines also splits on form feeds, U+2028, ...
        return [line.removesuffix("\r") for line in content.split("\n") if line.strip()]

    if (cfg.text is None) == (cfg.input is None):
        raise UserError(
            'give exactly one of text="..." (repeat text= for several), input=<file> '
            "or input=- (stdin, one text per line)"
        )
    if cfg.text is not None:
        texts = list(cfg.text) if isinstance(cfg.text, (list, ListConfig)) else [cfg.text]
        texts = [str(t) for t in texts]
        pairs = None
    elif str(cfg.input) == "-":
        texts, pairs = _lines(sys.stdin.read()), None
    else:
        path = Path(cfg.input).expanduser()
        if not path.is_file():
            raise UserError(f"input={cfg.input}: no such file")
        if detect_format(path, allowed=("csv", "tsv", "json", "jsonl", "parquet", "txt")) == "txt":
            texts, pairs = _lines(read_text(path)), None
        else:
            frame = read_table(path)
            for column, key in ((cfg.text_column, "text_column"), (cfg.text_pair_column, "text_pair_column")):
                if column and column not in frame.columns:
                    raise UserError(
                        f"{path}: no column '{column}' ({key}); its columns are: {', '.join(map(str, frame.columns))}; "
                        f"set {key}=<one of them>"
                    )
            texts = [str(t) if t is not None else "" for t in frame[cfg.text_column].tolist()]
            pairs = [str(t) for t in frame[cfg.text_pair_column].tolist()] if cfg.text_pair_column else None
    for number, text in enumerate(texts, start=1):
        if not text.strip():
            raise UserError(f"input {number} is empty; every input needs some text")
    if not texts:
        raise UserError(f"input={cfg.input}: no texts in it")
    return texts, pairs


def run(cfg: DictConfig) -> list[dict]:
    """Predict for every input; returns one dict per input, in input order."""
    validate("infer", cfg)
    from lmreason.evaluation.inference import infer_answers, infer_labels
    from lmreason.evaluation.loading import (
        checkpoint_max_length,
        load_model_for_inference,
        resolve_checkpoint,
        saved_run_config,
        task_of_model_dir,
    )
    from lmreason.evaluation.outputs import write_jsonl
    from lmreason.evaluation.predict import InferenceSession
    from lmreason.evaluation.report import MAX_SHOWN, generations_table, predictions_table
    from lmreason.tasks import get_task
    from lmreason.training.device import resolve_device
    from lmreason.ui import console

    texts, pairs = read_inputs(cfg)
    checkpoint_dir, _ = resolve_checkpoint(cfg.run, cfg.checkpoint)
    saved = saved_run_config(checkpoint_dir)
    task = get_task(saved.task if saved is not None else task_of_model_dir(checkpoint_dir))
    if cfg.explain:  # bad settings fail before the model loads
        _check_explain(cfg, task.name, checkpoint_dir)
    from lmreason.evaluation.calibration import temperature_for_inference

    applied = temperature_for_inference(checkpoint_dir, cfg.get("calibrated"), task.name)  # before the model loads
    device, precision = resolve_device(cfg.device)
    if cfg.backend == "torch":
        model, tokenizer = load_model_for_inference(checkpoint_dir, task.name, device, cfg.device.fast_paths)
    else:  # an exported graph behind the same batching (lmreason/evaluation/onnx_backend.py)
        from lmreason.evaluation.onnx_backend import load_backend

        model, tokenizer, device, precision = load_backend(
            checkpoint_dir, task.name, cfg.backend, device, cfg.cache_dir
        )
    session = InferenceSession(
        model, tokenizer, device, precision, cfg.batch_size, checkpoint_max_length(saved, tokenizer), cfg.generation
    )
    streamed = (
        task.name == "gen" and len(texts) == 1 and not cfg.output
    )  # one answer on the terminal: print it as it comes
    began = time.perf_counter()
    if task.name == "gen":
        predictions = infer_answers(session, task, texts, pairs, stream=streamed, with_ids=cfg.explain)
    else:
        predictions = infer_labels(session, texts, pairs, applied.temperature)
    if cfg.explain:  # a score per word toward the predicted label / the generated answer (evaluation.attribution)
        from lmreason.evaluation.attribution import delta_warning, explain_rows

        if task.name == "gen":
            from lmreason.evaluation.gen_attribution import explain_generation_rows

            attributions = explain_generation_rows(session, task, predictions, texts, cfg.attribution)
        else:
            attributions = explain_rows(session, predictions, texts, pairs, cfg.attribution)
        warning = delta_warning(attributions, cfg.attribution.delta_warning)
        if warning:
            console.print(f"[yellow]{warning}[/]")
    seconds = time.perf_counter() - began  # tokenize + batch + forward (model loading and file I/O excluded)
    if cfg.output:
        write_jsonl(Path(cfg.output), predictions)
        console.print(f"wrote {len(predictions)} predictions to {cfg.output}")
    elif cfg.explain:
        from lmreason.evaluation.attribution import print_explanations

        print_explanations(predictions, console, MAX_SHOWN)
        if len(predictions) > MAX_SHOWN:
            console.print(f"... {len(predictions) - MAX_SHOWN} more; use output=<file.jsonl> for all of them")
    elif not streamed:
        console.print(
            generations_table(predictions) if task.name == "gen" else predictions_table(predictions, cfg.top_k)
        )
        if len(predictions) > MAX_SHOWN:
            console.print(f"... {len(predictions) - MAX_SHOWN} more; use output=<file.jsonl> for all of them")
    if cfg.backend == "torch":
        from lmreason.evaluation.batch_workers import batch_workers

        workers = batch_workers(device)
        where = f"device {device}, {precision}" + (f", {workers} batches at once" if workers > 1 else "")
    else:
        from lmreason.evaluation.onnx_backend import describe

        where = describe(model)
    if applied.note:
        where += f"; {applied.note}"
    console.print(
        f"{len(predictions)} predictions in {seconds:.3f} s ({len(predictions) / max(seconds, 1e-9):.1f}/s, {where})"
    )
    return predictions


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model")


def _check_explain(cfg: DictConfig, task_name: str, checkpoint_dir: Path) -> None:
    """explain=true's settings, and what a checkpoint must have for them, before the model loads.

    Raises:
        UserError: bad attribution settings; target=reference (infer has no reference answers); a checkpoint
            without a tokenizer (attributions are per token and per word).
    """
    from lmreason.evaluation.attribution import check_config

    check_config(cfg.attribution)
    if not any((Path(checkpoint_dir) / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(
            f"explain=true: {checkpoint_dir} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); attributions "
            "are per token and word: save the tokenizer beside the weights (tokenizer.save_pretrained(<dir>))"
        )
    if task_name == "gen" and str(cfg.attribution.target) == "reference":
        raise UserError(
            "attribution.target=reference: infer has no reference answers to explain; use target=generated, "
            "or evaluate 'diagnostics=[attribution]' diagnostics.attribution.target=reference on data with them"
        )


main = hydra_command("infer")(run)
