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

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from lmreason.errors import UserError

BACKENDS = ("torch", "onnx", "onnx-int8")  # backend=: PyTorch, the fp32 graph, the int8 (dynamically quantized) graph
INSTALL_HINT = "pip install 'lmreason[onnx]' (onnxruntime and onnx)"


def require_onnxruntime(why: str):
    """The onnxruntime module (and a check that onnx is importable: export and quantization need it).

    Raises:
        UserError: either is not installed; the line gives the install command.
    """
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        raise UserError(f"{why} needs onnxruntime and onnx, which are not installed ({exc.name or 'import failed'}): "
                        f"{INSTALL_HINT}") from None
    return onnxruntime


def backend_list(value) -> list[str]:
    """`backend=onnx` or `backend=[torch,onnx-int8]` as a list of names (validated in lmreason.validation)."""
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def variant_of(backend: str) -> str:
    """The exported file a backend runs: fp32 (model.onnx) or int8 (model.int8.onnx)."""
    return {"onnx": "fp32", "onnx-int8": "int8"}[backend]


def session_options(ort, threads: int | None = None):
    """onnxruntime session settings, chosen rather than left to defaults.

    - graph optimisation ORT_ENABLE_ALL: constant folding plus the fusions (LayerNorm, Gelu, MatMul+Add,
      the int8 MatMul+scale kernels) onnxruntime applies when it loads the graph. Measured on MiniLM/SST-2
      dev, 1 thread: int8 210 samples/s with optimisation disabled, 253 with ALL; fp32 138 -> 145;
    - intra-op threads = torch's thread count (what `device.threads` / the load-aware default chose), one
      inter-op thread (a classifier graph is one chain: parallel branches gain nothing);
    - no spinning of idle pool threads when OMP_WAIT_POLICY=PASSIVE (lmreason's default, cli.passive_openmp_wait):
      on a shared machine spinning threads take the cores another job needs.
    """
    import torch

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: its warnings about unused initializers are noise here
    return options


def providers_for(ort, device) -> list[str]:
    """CUDA where the device is a GPU and onnxruntime has its CUDA provider (onnxruntime-gpu); else the CPU."""
    available = ort.get_available_providers()
    if getattr(device, "type", str(device)) == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxClassifier:
    """An exported classification graph, called like the Hugging Face model it came from.

    `model(input_ids=..., attention_mask=..., token_type_ids=...)` -> object with `.logits` (B, C) as a
    torch tensor. Inputs the graph does not take are dropped; token_type_ids it takes but is not given
    are zeros (what the torch model assumes).
    """

    def __init__(self, path: Path, config, device=None, threads: int | None = None):
        ort = require_onnxruntime("an onnx backend")
        self.path = Path(path)
        self.config = config  # the checkpoint's transformers config: num_labels, id2label
        try:
            self.session = ort.InferenceSession(str(self.path), session_options(ort, threads),
                                                providers=providers_for(ort, device))
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, NoSuchFile)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(f"{self.path}: cannot load this ONNX graph ({first[:160]}); the file may be damaged: "
                            f"export it again with lmreason export checkpoint={self.path.parent.parent}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        unknown = set(self.input_names) - {"input_ids", "attention_mask", "token_type_ids"}
        if "logits" not in outputs or unknown or "input_ids" not in self.input_names:
            raise UserError(f"{self.path}: not a graph lmreason exported (inputs {self.input_names}, outputs {outputs}); "
                            f"export it again with lmreason export checkpoint={self.path.parent.parent}")
        self.provider = self.session.get_providers()[0]

    def __call__(self, **inputs):
        import torch

        ids = inputs["input_ids"]
        feed = {}
        for name in self.input_names:
            value = inputs.get(name)
            if value is None:
                value = torch.ones_like(ids) if name == "attention_mask" else torch.zeros_like(ids)
            feed[name] = value.detach().cpu().numpy().astype(np.int64, copy=False)
        (logits,) = self.session.run(["logits"], feed)
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def eval(self):  # what callers of a torch model may do
        return self


def load_onnx_for_inference(checkpoint_dir: Path, backend: str, device=None, cache_dir: str | None = None):
    """(OnnxClassifier, tokenizer) for `backend` (onnx or onnx-int8), exporting the graph on first use
    (or again when the checkpoint's weights changed since it was exported).

    Raises:
        UserError: onnxruntime missing, not a classification checkpoint, an export that fails its check,
            a damaged graph.
    """
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
    return OnnxClassifier(path, config, device), tokenizer


def describe(model) -> str:
    """`onnx (CPUExecutionProvider)` for an onnx backend's model, `torch` otherwise (banners)."""
    if isinstance(model, OnnxClassifier):
        kind = "onnx-int8" if model.path.name.endswith(".int8.onnx") else "onnx"
        threads = model.session.get_session_options().intra_op_num_threads
        return f"backend {kind} ({model.provider}, {threads} thread{'s' if threads != 1 else ''})"
    return "backend torch"


def load_backend(checkpoint_dir: Path, task_name: str, backend: str, device, cache_dir: str | None):
    """(model, tokenizer, device, precision) of an onnx backend, for an InferenceSession: the batches stay on
    the CPU (onnxruntime moves them to its provider) and no autocast (the graph has its own precision).

    Raises:
        UserError: a task=gen model (the onnx backends are for classifiers), and those of load_onnx_for_inference.
    """
    import torch

    if task_name != "cls":
        raise UserError(f"backend={backend} supports task=cls (classification) models; {checkpoint_dir} is a "
                        f"task={task_name} model: use backend=torch")
    model, tokenizer = load_onnx_for_inference(checkpoint_dir, backend, device, cache_dir)
    return model, tokenizer, torch.device("cpu"), "fp32"
