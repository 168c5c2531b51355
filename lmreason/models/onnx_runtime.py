"""onnxruntime, imported only when asked for: the install check and `OnnxClassifier`, an exported
classification graph called like the Hugging Face model it came from (`lmreason export` makes the
graphs: models/onnx_export.py; evaluation/onnx_backend.py serves `infer`/`evaluate` from them).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from lmreason.errors import UserError

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
        raise UserError(
            f"{why} needs onnxruntime and onnx, which are not installed ({exc.name or 'import failed'}): {INSTALL_HINT}"
        ) from None
    return onnxruntime


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
            self.session = ort.InferenceSession(
                str(self.path), session_options(ort, threads), providers=providers_for(ort, device)
            )
        except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, NoSuchFile)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UserError(
                f"{self.path}: cannot load this ONNX graph ({first[:160]}); the file may be damaged: "
                f"export it again with lmreason export checkpoint={self.path.parent.parent}"
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        unknown = set(self.input_names) - {"input_ids", "attention_mask", "token_type_ids"}
        if "logits" not in outputs or unknown or "input_ids" not in self.input_names:
            raise UserError(
                f"{self.path}: not a graph lmreason exported (inputs {self.input_names}, outputs {outputs}); "
                f"export it again with lmreason export checkpoint={self.path.parent.parent}"
            )
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
