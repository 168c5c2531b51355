"""onnxruntime as an inference backend: an exported graph standing in for the PyTorch classifier.

`OnnxClassifier` is called like a Hugging Face classifier (the batch's tensors as keywords in,
`.logits` out) and carries the model's `config` (labels), so `predict_split` and `classify_texts`
batch it exactly as they batch the torch model: longest first, padded by the tokenizer or the
prepared split's collate, results in input order. Only the forward pass changes.

The graphs are made by `lmreason export` (lmreason/models/onnx_export.py) into
`<checkpoint>/onnx/`; a backend asked for before that exports on first use.
onnxruntime and onnx are an optional extra (`pip install 'lmreason[onnx]'`): nothing here is
imported unless an onnx backend is asked for.
"""

from __future__ import annotations

from pathlib import Path

from lmreason.errors import UserError
from lmreason.evaluation.batch_workers import batch_workers
from lmreason.models.onnx_runtime import INSTALL_HINT, OnnxClassifier, require_onnxruntime  # noqa: F401 (re-exported)

BACKENDS = ("torch", "onnx", "onnx-int8")  # backend=: PyTorch, the fp32 graph, the int8 (dynamically quantized) graph


def variant_of(backend: str) -> str:
    """The exported file a backend runs: fp32 (model.onnx) or int8 (model.int8.onnx)."""
    return {"onnx": "fp32", "onnx-int8": "int8"}[backend]


def load_onnx_for_inference(checkpoint_dir: Path, backend: str, device=None, cache_dir: str | None = None):
    """(OnnxClassifier, tokenizer) for `backend` (onnx or onnx-int8), exporting the graph on first use
    (or again when the checkpoint's weights changed since it was exported).

    Raises:
        UserError: onnxruntime missing, not a classification checkpoint, an export that fails its check,
            a damaged graph.
    """
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from lmreason.models.onnx_export import ensure_exported

    require_onnxruntime(f"backend={backend}")
    path = ensure_exported(checkpoint_dir, variant_of(backend), cache_dir=cache_dir, reason=f"backend={backend}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
        config = AutoConfig.from_pretrained(checkpoint_dir)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{checkpoint_dir}: cannot load its tokenizer or config ({first[:200]})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The batches stay on the CPU (load_backend) and run several at once, one intra-op thread each
    # (evaluation/batch_workers.py): a session of one thread, called from each worker.
    threads = 1 if batch_workers(torch.device("cpu")) > 1 else None
    return OnnxClassifier(path, config, device, threads), tokenizer


def describe(model) -> str:
    """`onnx (CPUExecutionProvider)` for an onnx backend's model, `torch` otherwise (banners)."""
    if isinstance(model, OnnxClassifier):
        kind = "onnx-int8" if model.path.name.endswith(".int8.onnx") else "onnx"
        import torch

        threads = model.session.get_session_options().intra_op_num_threads
        where = f"{threads} thread{'s' if threads != 1 else ''}"
        workers = batch_workers(torch.device("cpu"))
        if model.provider == "CPUExecutionProvider" and threads == 1 and workers > 1:
            where = f"{workers} batches at once, 1 thread each"
        return f"backend {kind} ({model.provider}, {where})"
    return "backend torch"


def load_backend(checkpoint_dir: Path, task_name: str, backend: str, device, cache_dir: str | None):
    """(model, tokenizer, device, precision) of an onnx backend, for an InferenceSession: the batches stay on
    the CPU (onnxruntime moves them to its provider) and no autocast (the graph has its own precision).

    Raises:
        UserError: a task=gen model (the onnx backends are for classifiers), and those of load_onnx_for_inference.
    """
    import torch

    if task_name != "cls":
        raise UserError(
            f"backend={backend} supports task=cls (classification) models; {checkpoint_dir} is a "
            f"task={task_name} model: use backend=torch"
        )
    model, tokenizer = load_onnx_for_inference(checkpoint_dir, backend, device, cache_dir)
    return model, tokenizer, torch.device("cpu"), "fp32"
