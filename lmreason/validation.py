"""One check of a command's config, run first by each command's `run(cfg)`: before any data or model is loaded.

Two layers, each check in one place:
  - the schema (lmreason/config.py): types, and closed choices as enums, so Hydra rejects a wrong
    value at compose time naming the key and the allowed values;
  - here: value ranges (lr > 0, steps >= 1, ...) and rules that span several keys (task=gen needs a
    decoder), per command: `validate(command, cfg)` or `VALIDATORS[command](cfg)`.
What needs a loaded thing stays where that thing is loaded: the layer count for
`regularization.freeze_layers` (the model's config), the task's metric names for the early-stopping
monitor, a tokenizer's eos token, the columns of a data file.

Every failure is one UserError line: what is wrong, which key, what to do. Importing this module is
cheap (no torch); only a device check whose answer depends on the hardware imports torch.
"""

from __future__ import annotations

from typing import Callable

from omegaconf import DictConfig

from lmreason.errors import UserError


def validate(command: str, cfg: DictConfig) -> None:
    """Check `cfg` of `command` (prepare, finetune, evaluate, infer, export).

    Raises:
        UserError: the first problem found.
    """
    VALIDATORS[command](cfg)


# --------------------------------------------------------------------------- commands
def validate_prepare(cfg: DictConfig) -> None:
    _check_model(cfg.model)
    _check_task(cfg.task)
    if cfg.task.name == "multi":  # each task entry names its own data; cfg.data is not used
        _check_multitask(cfg.task)
    else:
        _check_data(cfg.data, cfg.task.name)
    if cfg.get("augmentation") is not None:
        from lmreason.data.augment import check_config  # numpy only at import

        check_config(cfg.augmentation, cfg.task.name)


def validate_finetune(cfg: DictConfig) -> None:
    validate_prepare(cfg)
    _check_train(cfg.train)
    _check_optimization(cfg.optimizer, cfg.scheduler, cfg.regularization)
    _check_device(cfg.device)
    _check_generation(cfg.generation)
    if cfg.task.name == "gen" and cfg.model.arch != "decoder":
        raise UserError(
            f"task=gen needs a decoder model; model.arch={cfg.model.arch} (use model=gpt or model=tiny-gpt)"
        )
    if cfg.task.name == "multi":
        import os

        if cfg.model.arch != "encoder":
            raise UserError(
                f"task=multi trains classification heads on an encoder; model.arch={cfg.model.arch} "
                "(use model=bert or model=tiny-bert; a generation sub-task is not supported)"
            )
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError(
                "task=multi runs in one process (DDP would need unused-head handling); start it without torchrun"
            )
    if cfg.device.compile and cfg.regularization.get("adversarial") is not None:
        raise UserError(
            "device.compile=true with regularization=adversarial: the perturbation's hook on the embeddings "
            "breaks the compiled graph into pieces (slower than eager); drop one of them"
        )
    if cfg.model.lora.enabled and cfg.task.name != "gen":
        raise UserError("model.lora.enabled=true is supported with task=gen; turn it off for task=cls")


def validate_evaluate(cfg: DictConfig) -> None:
    if cfg.sweep and (cfg.run or cfg.checkpoint):
        raise UserError("give sweep= (a multirun dir) or run=/checkpoint= (one model), not both")
    if cfg.get("compare") is not None:
        if cfg.sweep or cfg.run or cfg.checkpoint:
            raise UserError("give compare='[<run>,<run>]' alone, without run=, checkpoint= or sweep=")
        if len(cfg.compare) < 2:
            raise UserError(
                f"compare={list(cfg.compare)}: give two or more evaluated run dirs, baseline first: "
                "compare='[<baseline run>,<other run>]'"
            )
    _check_positive("batch_size", cfg.batch_size)
    _check_device(cfg.device)
    _check_eager(cfg.device, "evaluate")
    _check_generation(cfg.generation)
    _check_backends(cfg.backend, several=True)
    if cfg.get("task") is not None:
        _check_task(cfg.task)
    if cfg.get("data") is not None:
        _check_data(cfg.data, cfg.task.name if cfg.get("task") is not None else None)


def validate_infer(cfg: DictConfig) -> None:
    if (cfg.text is None) == (cfg.input is None):
        raise UserError("give exactly one of text=\"...\" (or a list: text='[a,b]') or input=<file>")
    _check_positive("batch_size", cfg.batch_size)
    if cfg.top_k < 0:
        raise UserError(f"top_k={cfg.top_k}: must be >= 0 (0: all labels)")
    if cfg.get("explain"):
        from lmreason.evaluation.attribution import check_config  # numpy only at import

        check_config(cfg.attribution)
    _check_device(cfg.device)
    _check_eager(cfg.device, "infer")
    _check_generation(cfg.generation)
    _check_backends(cfg.backend, several=False)


def validate_export(cfg: DictConfig) -> None:
    _check_positive("batch_size", cfg.batch_size)
    _check_positive("export.check_examples", cfg.export.check_examples)
    _check_positive("export.opset", cfg.export.opset)
    if not cfg.export.tolerance > 0:
        raise UserError(
            f"export.tolerance={cfg.export.tolerance}: must be > 0 (the largest accepted |logit difference|)"
        )
    if not 0.0 <= cfg.export.int8_min_agreement <= 1.0:
        raise UserError(f"export.int8_min_agreement={cfg.export.int8_min_agreement}: a share, in [0, 1]")
    if not 0.0 <= cfg.export.int8_max_acc_drop <= 1.0:
        raise UserError(f"export.int8_max_acc_drop={cfg.export.int8_max_acc_drop}: an accuracy drop, in [0, 1]")
    _check_device(cfg.device)
    _check_eager(cfg.device, "export")


VALIDATORS: dict[str, Callable[[DictConfig], None]] = {
    "prepare": validate_prepare,
    "finetune": validate_finetune,
    "evaluate": validate_evaluate,
    "infer": validate_infer,
    "export": validate_export,
}


# --------------------------------------------------------------------------- groups
def _check_positive(key: str, value, hint: str = "") -> None:
    if value is not None and value < 1:
        raise UserError(f"{key}={value}: must be >= 1{hint}")


def _check_model(model_cfg: DictConfig) -> None:
    _check_positive("model.max_length", model_cfg.max_length)
    lora = model_cfg.lora
    if lora.enabled:
        if lora.rank < 1:
            raise UserError(f"model.lora.rank={lora.rank}: must be >= 1")
        if model_cfg.from_scratch and not lora.save_merged:
            raise UserError(
                "model.lora.save_merged=false with model.from_scratch=true: an adapter alone cannot rebuild "
                "a random-init base; save merged weights or start from pretrained weights"
            )
        if not 0.0 <= lora.dropout < 1.0:
            raise UserError(f"model.lora.dropout={lora.dropout}: a dropout probability must be in [0, 1)")


def _check_task(task_cfg: DictConfig) -> None:
    if task_cfg.name != "gen":
        return
    template = task_cfg.get("prompt_template")
    # the plain format, used when the tokenizer has no chat template (or use_chat_template=false)
    if template is not None and "{prompt}" not in template:
        raise UserError(
            f"task.prompt_template={template!r} has no {{prompt}} placeholder; "
            f"add one, e.g. 'Question: {{prompt}}\\nAnswer: '"
        )
    if task_cfg.get("generate_every_evals", 0) < 0:
        raise UserError(f"task.generate_every_evals={task_cfg.generate_every_evals}: must be >= 0 (0: never)")
    _check_positive("task.generate_samples", task_cfg.get("generate_samples"))


def _check_multitask(task_cfg: DictConfig) -> None:
    """task=multi: its entries (names, data options, their keys), each entry's data, the sampling and monitor."""
    from lmreason.tasks.multi_config import MONITORED, resolve_tasks

    entries = resolve_tasks(task_cfg)
    for entry in entries:
        try:
            _check_data(entry.data, "cls")
        except UserError as exc:
            raise UserError(f"task.tasks.{entry.name}: {exc}") from None
    if task_cfg.sampling == "temperature" and not task_cfg.temperature > 0:
        raise UserError(f"task.temperature={task_cfg.temperature}: must be > 0 (1: proportional; 2-5 is usual)")
    allowed = [f"val/{m}" for m in MONITORED] + [f"val/{e.name}/{m}" for e in entries for m in MONITORED]
    if task_cfg.monitor not in allowed:
        raise UserError(
            f"task.monitor={task_cfg.monitor}: not a multi-task metric; use the mean (val/acc, val/f1_macro, "
            f"val/loss, val/ece) or one task's, e.g. val/{entries[0].name}/acc"
        )


def _check_data(data_cfg: DictConfig, task_name: str | None) -> None:
    if data_cfg.source != "reasoning":
        return
    from lmreason.data.reasoning import check_request

    # the generator's own checks (task name, sizes, settings): here they run before a tokenizer is loaded
    check_request(
        data_cfg.task, data_cfg.sizes, data_cfg.seed, data_cfg.id_config, data_cfg.ood_config, task_name or "cls"
    )


def _check_train(t: DictConfig) -> None:
    if t.grad_accum_steps < 1:
        raise UserError(f"train.grad_accum_steps={t.grad_accum_steps}: must be >= 1")
    if t.batch_size < 1 or t.eval_batch_size < 1:
        raise UserError("train.batch_size and train.eval_batch_size must be >= 1")
    if t.max_steps is None and t.epochs <= 0:
        raise UserError(f"train.epochs={t.epochs}: must be > 0 (or set train.max_steps)")
    if t.max_steps is not None and t.max_steps < 1:
        raise UserError(f"train.max_steps={t.max_steps}: must be >= 1 (or null to use train.epochs)")
    if not t.eval_every_epoch and not t.eval_every_steps:
        raise UserError("no validation scheduled: set train.eval_every_epoch=true or train.eval_every_steps=N")
    _check_positive("train.log_every_steps", t.log_every_steps)
    _check_positive("train.eval_every_steps", t.eval_every_steps, " (or null)")
    _check_positive("train.save_every_steps", t.save_every_steps, " (or null)")
    if t.max_grad_norm is not None and t.max_grad_norm <= 0:
        raise UserError(f"train.max_grad_norm={t.max_grad_norm}: must be > 0 (or null: no clipping)")
    es = t.early_stopping
    if es.patience < 0 or es.min_delta < 0:
        raise UserError(f"train.early_stopping.patience={es.patience}, min_delta={es.min_delta}: both must be >= 0")


def _check_optimization(opt_cfg: DictConfig, sched_cfg: DictConfig, reg_cfg: DictConfig) -> None:
    if opt_cfg.lr <= 0:
        raise UserError(f"optimizer.lr={opt_cfg.lr}: the learning rate must be positive")
    if opt_cfg.eps <= 0:
        raise UserError(f"optimizer.eps={opt_cfg.eps}: must be > 0")
    if len(opt_cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in opt_cfg.betas):
        raise UserError(f"optimizer.betas={list(opt_cfg.betas)}: give two decay rates in [0, 1), e.g. [0.9, 0.999]")
    if opt_cfg.momentum < 0:
        raise UserError(f"optimizer.momentum={opt_cfg.momentum}: must be >= 0")
    if sched_cfg.warmup_steps < 0:
        raise UserError(
            f"scheduler.warmup_steps={sched_cfg.warmup_steps}: must be >= 0 (a fraction < 1 or a step count)"
        )
    if not 0.0 <= sched_cfg.min_lr_ratio <= 1.0:
        raise UserError(
            f"scheduler.min_lr_ratio={sched_cfg.min_lr_ratio}: must be in [0, 1] (a fraction of the peak lr)"
        )
    if reg_cfg.weight_decay < 0:
        raise UserError(f"regularization.weight_decay={reg_cfg.weight_decay}: must be >= 0")
    for key in ("hidden_dropout", "attention_dropout"):
        value = reg_cfg[key]
        if value is not None and not 0.0 <= value < 1.0:
            raise UserError(f"regularization.{key}={value}: a dropout probability must be in [0, 1)")
    if reg_cfg.get("adversarial") is not None:
        _check_adversarial(reg_cfg.adversarial)


def _check_adversarial(adv: DictConfig) -> None:
    key = "regularization.adversarial"
    if not adv.epsilon > 0:
        raise UserError(
            f"{key}.epsilon={adv.epsilon}: the perturbation's L2 bound must be > 0 (e.g. 1.0); "
            "to train without it drop adversarial from regularization="
        )
    if adv.steps < 1:
        raise UserError(f"{key}.steps={adv.steps}: pgd and freelb take K >= 1 ascent steps (e.g. 3)")
    if adv.step_size is not None and not adv.step_size > 0:
        raise UserError(f"{key}.step_size={adv.step_size}: must be > 0 (or null: epsilon / steps)")
    if adv.step_size is not None and adv.method == "fgm":
        raise UserError(
            f"{key}.step_size={adv.step_size} with method=fgm: FGM takes one step of length epsilon; "
            "set step_size=null or use method=pgd / freelb"
        )
    if not 0.0 < adv.weight < 1.0:
        raise UserError(
            f"{key}.weight={adv.weight}: the adversarial loss's share must be in (0, 1) (0.5: the mean of "
            "the clean and the adversarial loss)"
        )


def _check_device(device_cfg: DictConfig) -> None:
    """Device values; CUDA's presence is asked of torch only when the answer depends on it."""
    if device_cfg.threads is not None and device_cfg.threads < 1:
        raise UserError(f"device.threads={device_cfg.threads}: give a positive number of threads (or null)")
    if device_cfg.device == "cpu" and device_cfg.precision == "fp16":
        raise UserError("device.precision=fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    if device_cfg.device == "cuda" or (device_cfg.device == "auto" and device_cfg.precision == "fp16"):
        import torch

        if not torch.cuda.is_available():
            if device_cfg.device == "cuda":
                raise UserError("device=cuda but no CUDA GPU is visible; use device=auto or device=cpu")
            raise UserError("device.precision=fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")


def _check_eager(device_cfg: DictConfig, command: str) -> None:
    """device.compile is for training: evaluation and inference are too short to repay compiling."""
    if device_cfg.get("compile"):
        raise UserError(
            f"device.compile=true applies to finetune only; {command} runs the model eager "
            "(compiling takes minutes and a pass over a split seconds): drop device.compile"
        )


def _check_backends(value, several: bool) -> None:
    """backend=torch|onnx|onnx-int8 (evaluate: also a list of them, compared side by side)."""
    from omegaconf import ListConfig

    names = list(value) if isinstance(value, (list, ListConfig)) else [value]
    allowed = ("torch", "onnx", "onnx-int8")  # lmreason.evaluation.onnx_backend.BACKENDS (not imported: numpy)
    if isinstance(value, (list, ListConfig)) and not several:
        raise UserError(
            f"backend={list(value)}: infer takes one backend ({', '.join(allowed)}); "
            "compare backends with lmreason evaluate backend=[torch,onnx-int8]"
        )
    for name in names:
        if str(name) not in allowed:
            raise UserError(
                f"backend={name}: not a backend; choose {', '.join(allowed)}"
                + (" (or a list: backend=[torch,onnx-int8])" if several else "")
            )
    if len(set(map(str, names))) != len(names) or not names:
        raise UserError(f"backend={list(names)}: give each backend once")


def _check_generation(gen_cfg: DictConfig) -> None:
    if gen_cfg.max_new_tokens < 1 or gen_cfg.batch_size < 1:
        raise UserError("generation.max_new_tokens and generation.batch_size must be >= 1")
    if gen_cfg.do_sample and not (gen_cfg.temperature > 0 and 0 < gen_cfg.top_p <= 1):
        raise UserError(
            f"generation.temperature={gen_cfg.temperature}, top_p={gen_cfg.top_p}: "
            "sampling needs temperature > 0 and 0 < top_p <= 1"
        )
