"""`lmreason infer`: labels and class probabilities (or generated answers) for texts or a file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from lmreason.commands.entry import hydra_command
from lmreason.errors import UserError


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
        raise UserError('give exactly one of text="..." (repeat text= for several), input=<file> '
                        "or input=- (stdin, one text per line)")
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
                    raise UserError(f"{path}: no column '{column}' ({key}); its columns are: {', '.join(map(str, frame.columns))}; set {key}=<one of them>")
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
    from lmreason.evaluation.loading import load_model_for_inference, resolve_checkpoint, saved_run_config
    from lmreason.tasks import get_task
    from lmreason.training.device import resolve_device

    texts, pairs = read_inputs(cfg)
    checkpoint_dir, _ = resolve_checkpoint(cfg.run, cfg.checkpoint)
    saved = saved_run_config(checkpoint_dir)
    task_name = saved.task.name if saved is not None else _task_of(checkpoint_dir)
    max_length = saved.model.max_length if saved is not None else None
    device, precision = resolve_device(cfg.device)
    model, tokenizer = load_model_for_inference(checkpoint_dir, task_name, device)
    task = get_task(task_name)
    began = time.perf_counter()
    predictions = task.infer(model, tokenizer, texts, pairs, cfg, device, precision, max_length, saved)
    seconds = time.perf_counter() - began  # tokenize + batch + forward (model loading and file I/O excluded)
    if cfg.output:
        _write_jsonl(Path(cfg.output), predictions)
    else:
        task.render_predictions(predictions, cfg)
    from lmreason.ui import console

    console.print(f"{len(predictions)} predictions in {seconds:.3f} s ({len(predictions) / max(seconds, 1e-9):.1f}/s, "
                  f"device {device}, {precision})")
    return predictions


def _task_of(checkpoint_dir: Path) -> str:
    """A plain Hugging Face model dir: classification unless its architecture is a causal LM."""
    config = json.loads((checkpoint_dir / "config.json").read_text())
    architectures = " ".join(config.get("architectures") or [])
    return "gen" if "CausalLM" in architectures else "cls"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from lmreason.ui import console

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise UserError(f"output={path}: cannot write it ({exc.strerror or exc})") from None
    console.print(f"wrote {len(rows)} predictions to {path}")


main = hydra_command("infer")(run)
