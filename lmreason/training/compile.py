"""`device.compile=true`: the model's forward through torch.compile (TorchInductor), for long runs.

`nn.Module.compile` compiles in place: the module, its parameters, state_dict keys and checkpoints
stay what they were (a plain `transformers` dir), only calling it runs the compiled graph.
Sequence lengths vary from batch to batch (batches grouped by length), so shapes are marked dynamic
from the start: one graph for all lengths instead of a recompile per new length. Training and
evaluation mode are two graphs. The first steps pay the compilation (minutes on a CPU); what it
saves per step decides from what run length it pays. On the 2-core CPU this was built on it saves
nothing: MiniLM's compiled steps ran at 0.70x eager after ~109 s of compiling
(`scripts/bench_compile.py`, README "Benchmarks"), so it is off by default; GPUs are unmeasured.
"""

from __future__ import annotations


def compile_model(model) -> str:
    """Compile `model`'s forward in place; returns what the banner says."""
    model.compile(dynamic=True)
    return "torch.compile (inductor, dynamic shapes): the first steps compile"
