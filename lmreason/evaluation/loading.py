"""Find and load the model of a run dir or a checkpoint dir, safely.

Weights load from safetensors only (`use_safetensors=True`: a pickled
pytorch_model.bin is refused, never executed); a run's saved config is read as
plain YAML and only its data/model/task fields are used, never instantiated.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmreason.errors import UserError
from lmreason.models.packaged import PACKAGED_MODELS, resolve_model_path


def resolve_checkpoint(
    run: str | None, checkpoint: str | None, prefer: str = "best", allow_multitask: bool = False
) -> tuple[Path, Path | None]:
    """(checkpoint dir, run dir or None) from `run=` or `checkpoint=`. A task=multi checkpoint (heads/<task>/,
    no model of its own) is returned only with `allow_multitask` (evaluate); elsewhere its heads are named.

    Raises:
        UserError: neither or both given, a missing dir, a dir without a model, a multi-task one not allowed.
    """
    from lmreason.training.checkpoint import recover_checkpoint

    if bool(run) == bool(checkpoint):
        raise UserError("give exactly one of run=<finetune run dir> or checkpoint=<model dir>")
    if run:
        run_dir = Path(run).expanduser()
        if not run_dir.is_dir():
            raise UserError(f"run={run}: no such directory; give a run dir printed by lmreason finetune")
        for name in (prefer, "last"):
            recover_checkpoint(run_dir / "checkpoints" / name)
            candidate = run_dir / "checkpoints" / name
            if (candidate / "config.json").is_file() or (candidate / "adapter_config.json").is_file():
                return candidate, run_dir
            if (candidate / "heads").is_dir():
                return _multitask(candidate, allow_multitask, f"run={run}"), run_dir
        raise UserError(
            f"run={run}: no checkpoint in {run_dir / 'checkpoints'}; "
            "finetune it first (a checkpoint is written at every validation)"
        )
    path = Path(checkpoint).expanduser()
    if not path.exists() and str(checkpoint).strip().lower() in PACKAGED_MODELS:  # e.g. the untuned SmolLM2
        path = Path(resolve_model_path(str(checkpoint)))
    if (path / "heads").is_dir() and not (path / "config.json").is_file():
        return _multitask(path, allow_multitask, f"checkpoint={checkpoint}"), None
    if not ((path / "config.json").is_file() or (path / "adapter_config.json").is_file()):
        raise UserError(
            f"checkpoint={checkpoint}: no model there (config.json missing); "
            "give a checkpoint dir, a Hugging Face model dir or a packaged model name"
        )
    return path, None


def _multitask(checkpoint_dir: Path, allowed: bool, given: str) -> Path:
    if allowed:
        return checkpoint_dir
    heads = sorted(p.name for p in (checkpoint_dir / "heads").iterdir() if p.is_dir())
    raise UserError(
        f"{given} is a multi-task (task=multi) model with heads {', '.join(heads)}; "
        f"give one head: checkpoint={checkpoint_dir / 'heads' / (heads[0] if heads else '<task>')}"
    )


def task_of_model_dir(checkpoint_dir: Path) -> str:
    """A plain Hugging Face model dir: "gen" for a causal LM (or a LoRA adapter), else "cls".

    Causal LMs are named `*ForCausalLM` (Llama, SmolLM2, Qwen) or, in older architectures, `*LMHeadModel`
    (GPT2LMHeadModel, OpenAIGPTLMHeadModel)."""
    import json

    if (checkpoint_dir / "adapter_config.json").is_file():
        return "gen"
    config = json.loads((checkpoint_dir / "config.json").read_text())
    causal = ("ForCausalLM", "LMHeadModel")
    return "gen" if any(arch.endswith(causal) for arch in config.get("architectures") or []) else "cls"


def saved_run_config(checkpoint_dir: Path) -> DictConfig | None:
    """The resolved config a checkpoint was trained with (plain YAML), if it has one."""
    path = checkpoint_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        return OmegaConf.load(path)
    except Exception as exc:
        raise UserError(
            f"{path}: unreadable config ({type(exc).__name__}); the checkpoint dir may be damaged"
        ) from None


def load_model_for_inference(
    checkpoint_dir: Path, task_name: str, device, fast_paths: bool = True, trust_remote_code: bool = False
):
    """(model in eval mode on `device`, tokenizer). Safetensors weights only."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from lmreason.models.fast_paths import apply_fast_paths

    auto = AutoModelForSequenceClassification if task_name == "cls" else AutoModelForCausalLM
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, trust_remote_code=trust_remote_code)
        model = auto.from_pretrained(checkpoint_dir, use_safetensors=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{checkpoint_dir}: cannot load the model ({first[:200]}); lmreason loads safetensors weights only"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    apply_fast_paths(
        model, device, enabled=fast_paths, training=False
    )  # a classifier's last layer computes [CLS] only (checked)
    return model, tokenizer


DEFAULT_MAX_LENGTH = 512  # tokens per input of a checkpoint without a saved run config


def checkpoint_max_length(saved: DictConfig | None, tokenizer) -> int:
    """The token budget for a checkpoint's inputs: its run's `model.max_length`; for a plain model dir
    (no saved config), the tokenizer's `model_max_length` capped at DEFAULT_MAX_LENGTH (tokenizers
    without a limit report a huge sentinel)."""
    if saved is not None and saved.get("model") is not None and saved.model.get("max_length"):
        return int(saved.model.max_length)
    limit = getattr(tokenizer, "model_max_length", None) or DEFAULT_MAX_LENGTH
    return int(min(limit, DEFAULT_MAX_LENGTH))


def label_names_of(model) -> list[str]:
    id2label = model.config.id2label or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)]


def evaluation_config(cfg: DictConfig, checkpoint_dir: Path, saved: DictConfig | None) -> DictConfig:
    """The model/task/data settings to rebuild the evaluation data with (the run's own unless overridden).

    `model.max_length` is the saved run's, or null for a plain model dir (filled in from its tokenizer).
    """
    data = cfg.data if cfg.data is not None else (saved.data if saved is not None else None)
    if data is None:
        raise UserError(
            f"checkpoint={checkpoint_dir} has no lmreason run config: "
            "say which data to evaluate on (e.g. data=local data.path=...)"
        )
    task = saved.task if saved is not None else OmegaConf.create({"name": task_of_model_dir(checkpoint_dir)})
    if cfg.get("task") is not None:  # other prompt settings, e.g. the format a fine-tuned run used, for its base model
        if cfg.task.name != task.name:
            raise UserError(
                f"task={cfg.task.name}: {checkpoint_dir} is a task={task.name} model; "
                f"evaluate it with task={task.name} or leave task unset"
            )
        task = cfg.task
    return OmegaConf.create(
        {
            "model": {
                "name_or_path": str(checkpoint_dir),
                "max_length": saved.model.max_length if saved is not None else None,
            },
            "task": OmegaConf.to_container(task, resolve=True),
            "data": OmegaConf.to_container(data, resolve=True),
            "cache_dir": cfg.cache_dir,
            "force": False,
        }
    )
