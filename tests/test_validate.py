"""One way to validate a config: closed choices fail at compose time, every shipped option passes
`validate`, each documented bad combination fails it with its one line, and the learning-rate
schedule is transformers' own, step for step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from test_configs import COMMAND_GROUPS, CONF, GROUPS, REQUIRED

from lmreason.config import FinetuneCommandConfig
from lmreason.errors import UserError
from lmreason.validation import VALIDATORS, validate

NEEDS = {"infer": ["text=hello"]}  # what a command needs before it can run at all


def composed(command: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(
            config_name=command,
            overrides=[*NEEDS.get(command, []), *overrides, "output_dir=/tmp/x", "cache_dir=/tmp/c"],
        )


def shipped_cases():
    for command, groups in COMMAND_GROUPS.items():
        for group in groups:
            for option in GROUPS[group]:
                yield command, group, option


@pytest.mark.parametrize("command,group,option", list(shipped_cases()))
def test_every_shipped_option_validates(command, group, option):
    overrides = [f"{group}={option}", *(REQUIRED.get(option, []) if group == "data" else [])]
    if command == "finetune" and (group, option) in (("task", "gen"),):
        overrides.append("model=tiny-gpt")  # task=gen needs a decoder (tested below)
    if (group, option) == ("task", "multi") and command in ("prepare", "finetune"):
        with pytest.raises(UserError, match="task.tasks is empty; multi-task training needs at least two"):
            validate(command, composed(command, *overrides))  # the option's documented refusal: no tasks given
        overrides.append("task.tasks={a: {data: reasoning}, b: {data: family}}")
    cfg = composed(command, *overrides)
    if (group, option) == ("device", "cuda") and not _cuda():
        with pytest.raises(
            UserError, match="device=cuda but no CUDA GPU is visible"
        ):  # the option's documented refusal
            validate(command, cfg)
        return
    validate(command, cfg)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_every_command_has_a_validator():
    assert set(VALIDATORS) == set(COMMAND_GROUPS)


# --------------------------------------------------------------------------- closed choices: compose time
ENUM_KEYS = {
    "device.precision": ("fp64", "auto, fp32, bf16, fp16"),
    "device.device": ("tpu", "auto, cpu, cuda"),
    "device.backend": ("mpi", "auto, nccl, gloo"),
    "train.nonfinite": ("ignore", "stop, skip"),
    "train.early_stopping.mode": ("up", "min, max"),
    "task.monitor_mode": ("up", "min, max"),
    "optimizer.name": ("adam", "adamw, sgd"),
    "scheduler.name": ("exponential", "linear, cosine, constant"),
    "model.arch": ("seq2seq", "encoder, decoder"),
    "data.format": ("xlsx", "csv, tsv, json, jsonl, parquet"),
}


@pytest.mark.parametrize("key", list(ENUM_KEYS))
def test_a_bad_closed_choice_fails_at_compose_time_naming_key_and_values(key):
    value, allowed = ENUM_KEYS[key]
    extra = ["data=local", "data.path=x.csv"] if key.startswith("data.") else []
    with pytest.raises(ConfigCompositionException) as info:
        composed("finetune", *extra, f"{key}={value}")
    message = f"{info.value} {info.value.__cause__}"
    assert f"Invalid value '{value}', expected one of [{allowed}]" in message
    assert f"full_key: {key}" in message


def test_closed_choices_compare_as_strings_and_save_as_plain_yaml(tmp_path):
    """A checkpoint stores OmegaConf.to_yaml(cfg, resolve=True); resume merges it back onto the schema."""
    from lmreason.commands.finetune import resolve_resume

    cfg = composed("finetune", "task=gen", "model=tiny-gpt", "device=cpu", "device.precision=fp32")
    assert (
        cfg.device.precision == "fp32"
        and f"{cfg.device.precision}" == "fp32"
        and cfg.train.early_stopping.mode == "min"
    )
    saved = tmp_path / "checkpoints" / "last" / "config.yaml"
    saved.parent.mkdir(parents=True)
    saved.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    assert "precision: fp32" in saved.read_text() and "nonfinite: stop" in saved.read_text()  # plain strings
    plain = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert {type(plain["device"][k]) for k in ("device", "precision", "backend")} == {str}
    resumed, _ = resolve_resume(OmegaConf.create({"resume": str(tmp_path), "model": {"trust_remote_code": False}}))
    validate("finetune", resumed)
    back = OmegaConf.to_container(resumed, resolve=True, enum_to_str=True)
    assert back == {**plain, "resume": str(tmp_path)}
    # a tampered file fails on the same schema, as one line
    saved.write_text(saved.read_text().replace("precision: fp32", "precision: fp64"))
    with pytest.raises(
        UserError, match=r"not a valid lmreason finetune config \(Invalid value 'fp64', expected one of"
    ):
        resolve_resume(OmegaConf.create({"resume": str(tmp_path), "model": {"trust_remote_code": False}}))


def test_the_schema_rejects_a_bad_value_outside_hydra_too():
    with pytest.raises(Exception, match=r"expected one of \[stop, skip\]"):
        OmegaConf.merge(OmegaConf.structured(FinetuneCommandConfig), {"train": {"nonfinite": "retry"}})


# --------------------------------------------------------------------------- documented bad combinations
GEN = ["task=gen", "model=tiny-gpt"]
BAD = {
    # finetune: train
    "accumulation of 0": ("finetune", ["train.grad_accum_steps=0"], r"train\.grad_accum_steps=0: must be >= 1"),
    "batch of 0": ("finetune", ["train.batch_size=0"], r"train\.batch_size and train\.eval_batch_size must be >= 1"),
    "eval batch of 0": ("finetune", ["train.eval_batch_size=0"], r"train\.batch_size and train\.eval_batch_size"),
    "no epochs": ("finetune", ["train.epochs=0"], r"train\.epochs=0\.0: must be > 0 \(or set train\.max_steps\)"),
    "max_steps of 0": ("finetune", ["train.max_steps=0"], r"train\.max_steps=0: must be >= 1 \(or null"),
    "no validation": (
        "finetune",
        ["train.eval_every_epoch=false"],
        r"no validation scheduled: set train\.eval_every_epoch",
    ),
    "logging every 0 steps": ("finetune", ["train.log_every_steps=0"], r"train\.log_every_steps=0: must be >= 1$"),
    "eval every 0 steps": (
        "finetune",
        ["train.eval_every_steps=0"],
        r"train\.eval_every_steps=0: must be >= 1 \(or null\)",
    ),
    "save every 0 steps": (
        "finetune",
        ["train.save_every_steps=0"],
        r"train\.save_every_steps=0: must be >= 1 \(or null\)",
    ),
    "no clipping bound": ("finetune", ["train.max_grad_norm=0"], r"train\.max_grad_norm=0\.0: must be > 0 \(or null"),
    "negative patience": (
        "finetune",
        ["train.early_stopping.patience=-1"],
        r"train\.early_stopping\.patience=-1, min_delta=0\.0",
    ),
    "negative min_delta": ("finetune", ["train.early_stopping.min_delta=-0.1"], r"min_delta=-0\.1: both must be >= 0"),
    # finetune: optimizer, scheduler, regularization
    "a negative learning rate": (
        "finetune",
        ["optimizer.lr=-0.1"],
        r"optimizer\.lr=-0\.1: the learning rate must be positive",
    ),
    "a zero learning rate": ("finetune", ["optimizer.lr=0"], r"optimizer\.lr=0\.0: the learning rate must be positive"),
    "zero eps": ("finetune", ["optimizer.eps=0"], r"optimizer\.eps=0\.0: must be > 0"),
    "a beta of 1": (
        "finetune",
        ["optimizer.betas=[0.9,1.0]"],
        r"optimizer\.betas=\[0\.9, 1\.0\]: give two decay rates",
    ),
    "negative momentum": (
        "finetune",
        ["optimizer=sgd", "optimizer.momentum=-1"],
        r"optimizer\.momentum=-1\.0: must be >= 0",
    ),
    "negative warmup": ("finetune", ["scheduler.warmup_steps=-1"], r"scheduler\.warmup_steps=-1\.0: must be >= 0"),
    "a floor above the peak": (
        "finetune",
        ["scheduler.min_lr_ratio=1.5"],
        r"scheduler\.min_lr_ratio=1\.5: must be in \[0, 1\]",
    ),
    "negative weight decay": (
        "finetune",
        ["regularization.weight_decay=-0.01"],
        r"regularization\.weight_decay=-0\.01: must be >= 0",
    ),
    "dropout of 1.5": (
        "finetune",
        ["regularization.hidden_dropout=1.5"],
        r"regularization\.hidden_dropout=1\.5: a dropout probability must be in \[0, 1\)",
    ),
    "negative attention dropout": (
        "finetune",
        ["regularization.attention_dropout=-0.1"],
        r"regularization\.attention_dropout=-0\.1",
    ),
    # finetune: device
    "fp16 on the CPU": (
        "finetune",
        ["device=cpu", "device.precision=fp16"],
        r"device\.precision=fp16 needs a CUDA GPU; on the CPU use bf16 or fp32",
    ),
    "zero threads": (
        "finetune",
        ["device.threads=0"],
        r"device\.threads=0: give a positive number of threads \(or null\)",
    ),
    # finetune: task x model
    "task=gen on an encoder": (
        "finetune",
        ["task=gen", "model=bert"],
        r"task=gen needs a decoder model; model\.arch=encoder",
    ),
    "compile with adversarial training": (
        "finetune",
        ["device.compile=true", "regularization=adversarial"],
        r"device\.compile=true with regularization=adversarial: .* drop one of them",
    ),
    "LoRA for classification": (
        "finetune",
        ["model.lora.enabled=true"],
        r"model\.lora\.enabled=true is supported with task=gen",
    ),
    "LoRA rank 0": (
        "finetune",
        [*GEN, "model.lora.enabled=true", "model.lora.rank=0"],
        r"model\.lora\.rank=0: must be >= 1",
    ),
    "LoRA adapter of a random base": (
        "finetune",
        [*GEN, "model.lora.enabled=true", "model.lora.save_merged=false"],
        r"model\.lora\.save_merged=false with model\.from_scratch=true: .*random-init base",
    ),
    "LoRA dropout of 1": (
        "finetune",
        [*GEN, "model.lora.enabled=true", "model.lora.dropout=1.0"],
        r"model\.lora\.dropout=1\.0",
    ),
    "a prompt template without {prompt}": (
        "finetune",
        [*GEN, "task.prompt_template=Q:"],
        r"task\.prompt_template='Q:' has no \{prompt\} placeholder",
    ),
    "negative generate_every_evals": (
        "finetune",
        [*GEN, "task.generate_every_evals=-1"],
        r"task\.generate_every_evals=-1: must be >= 0",
    ),
    "no generate_samples": ("finetune", [*GEN, "task.generate_samples=0"], r"task\.generate_samples=0: must be >= 1"),
    "no new tokens": (
        "finetune",
        ["generation.max_new_tokens=0"],
        r"generation\.max_new_tokens and generation\.batch_size must be >= 1",
    ),
    "sampling at temperature 0": (
        "finetune",
        ["generation=sample", "generation.temperature=0"],
        r"generation\.temperature=0\.0, top_p=0\.9: sampling needs temperature > 0",
    ),
    "sampling with top_p 0": (
        "finetune",
        ["generation=sample", "generation.top_p=0"],
        r"top_p=0\.0: sampling needs .*0 < top_p <= 1",
    ),
    "zero max_length": ("finetune", ["model.max_length=0"], r"model\.max_length=0: must be >= 1"),
    # prepare (and finetune): the reasoning generator's own checks, before any tokenizer is loaded
    "an unknown reasoning task": ("prepare", ["data.task=family_relationship"], r"did you mean family_relationships"),
    "a negative size": ("prepare", ["data.sizes.train=-1"], r"sizes\.train=-1 must be a whole number >= 0"),
    "an unknown split size": (
        "prepare",
        ["+data.sizes.tset=5"],
        r"sizes\.tset: unknown split \(did you mean 'test'\?\)",
    ),
    "a bad generator setting": (
        "prepare",
        ["data=family", "+data.id_config.max_familysize=5"],
        r"id_config\.max_familysize: not a family_relationships setting; did you mean 'max_family_size'",
    ),
    "ood_config without an ood size": (
        "prepare",
        ["~data.sizes.ood"],
        r"ood_config is set but sizes has no 'ood' entry",
    ),
    "ood the same as id": (
        "prepare",
        ["data.ood_config.inversion_probability=0.0"],
        r"gives the same syllogism settings as id_config",
    ),
    "a gen prompt template": (
        "prepare",
        ["task=gen", "model=tiny-gpt", "task.prompt_template=Q:"],
        r"has no \{prompt\} placeholder",
    ),
    # evaluate
    "a sweep and a run": (
        "evaluate",
        ["sweep=/s", "run=/r"],
        r"give sweep= \(a multirun dir\) or run=/checkpoint= \(one model\), not both",
    ),
    "evaluate batch of 0": ("evaluate", ["batch_size=0"], r"^batch_size=0: must be >= 1$"),
    "evaluate compiled": (
        "evaluate",
        ["device.compile=true"],
        r"device\.compile=true applies to finetune only; evaluate runs the model eager",
    ),
    "infer compiled": ("infer", ["text=hi", "device.compile=true"], r"applies to finetune only; infer runs"),
    "evaluate fp16 on the CPU": (
        "evaluate",
        ["device=cpu", "device.precision=fp16"],
        r"device\.precision=fp16 needs a CUDA GPU",
    ),
    "evaluate greedy of 0 tokens": ("evaluate", ["generation.max_new_tokens=0"], r"generation\.max_new_tokens"),
    "evaluate with a bad gen task": (
        "evaluate",
        ["task=gen", "task.prompt_template=Q:"],
        r"has no \{prompt\} placeholder",
    ),
    "evaluate on a bad reasoning task": (
        "evaluate",
        ["data=reasoning", "data.task=nonsense_xyz"],
        r"not a reasoning-gym generator",
    ),
    # infer
    "infer with text and input": ("infer", ["input=x.jsonl"], r"give exactly one of text="),
    "infer batch of 0": ("infer", ["batch_size=0"], r"^batch_size=0: must be >= 1$"),
    "infer top_k -1": ("infer", ["top_k=-1"], r"top_k=-1: must be >= 0"),
    "infer zero threads": ("infer", ["device.threads=0"], r"device\.threads=0"),
    "infer sampling at temperature 0": (
        "infer",
        ["generation.do_sample=true", "generation.temperature=0"],
        r"sampling needs",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_combination_fails_validate_with_one_line(case):
    command, overrides, expected = BAD[case]
    cfg = composed(command, *overrides)
    with pytest.raises(UserError, match=expected) as info:
        validate(command, cfg)
    assert "\n" not in str(info.value)


def test_infer_needs_text_or_input():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="infer", overrides=["output_dir=/tmp/x", "cache_dir=/tmp/c"])
    with pytest.raises(UserError, match="give exactly one of text="):
        validate("infer", cfg)


def test_cuda_asked_for_without_one_fails_in_validate():
    if _cuda():
        pytest.skip("a GPU is visible")
    for command in ("finetune", "evaluate", "infer"):
        with pytest.raises(UserError, match=r"^device=cuda but no CUDA GPU is visible; use device=auto or device=cpu$"):
            validate(command, composed(command, "device=cuda"))
        with pytest.raises(UserError, match=r"device\.precision=fp16 needs a CUDA GPU"):
            validate(command, composed(command, "device=auto", "device.precision=fp16"))


# --------------------------------------------------------------------------- the schedule is transformers'
def lr_curve(make_scheduler, steps: int, lr: float = 0.1) -> list[float]:
    """The lr each of `steps` optimizer steps trains with, then the one after the last step."""
    import torch

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = make_scheduler(optimizer)
    curve = []
    for _ in range(steps):
        curve.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return curve + [optimizer.param_groups[0]["lr"]]


def trainer_warmup(warmup: float, total: int) -> int:
    """What Hugging Face Trainer makes of `warmup_steps` (a fraction < 1, or a count)."""
    from transformers import TrainingArguments

    return TrainingArguments.get_warmup_steps(SimpleNamespace(warmup_steps=warmup), total)


# lmreason (name, min_lr_ratio) -> Trainer's lr_scheduler_type and lr_scheduler_kwargs for the same schedule
TRAINER_EQUIVALENT = {
    ("linear", 0.0): ("linear", {}),
    ("cosine", 0.0): ("cosine", {}),
    ("cosine", 0.2): ("cosine_with_min_lr", {"min_lr_rate": 0.2}),
    ("constant", 0.0): ("constant_with_warmup", {}),
    ("linear", 0.2): ("polynomial", {"lr_end": 0.2 * 0.1, "power": 1.0}),
}


@pytest.mark.parametrize("warmup", [0, 0.1, 0.5, 3, 17])
@pytest.mark.parametrize("name,floor", list(TRAINER_EQUIVALENT))
def test_schedule_equals_transformers_at_every_step(name, floor, warmup):
    from transformers import get_scheduler

    from lmreason.training.optim import build_scheduler, warmup_steps

    total = 17
    cfg = OmegaConf.create({"name": name, "warmup_steps": warmup, "min_lr_ratio": floor})
    assert warmup_steps(cfg, total) == trainer_warmup(warmup, total)
    hf_name, kwargs = TRAINER_EQUIVALENT[(name, floor)]
    ours = lr_curve(lambda opt: build_scheduler(opt, cfg, total), total)
    w = warmup_steps(cfg, total)
    if hf_name == "polynomial" and w == total:  # transformers' polynomial decay divides by (total - warmup) = 0 here
        assert ours[:total] == pytest.approx([0.1 * s / w for s in range(total)])
        return
    theirs = lr_curve(
        lambda opt: get_scheduler(
            hf_name,
            opt,
            num_warmup_steps=trainer_warmup(warmup, total),
            num_training_steps=total,
            scheduler_specific_kwargs=kwargs,
        ),
        total,
    )
    assert ours[:total] == pytest.approx(theirs[:total], rel=1e-12, abs=1e-15)  # every step that trains
    assert ours[0] == pytest.approx(
        0.0 if w else 0.1, abs=1e-15
    )  # Trainer's warmup: step / warmup, the first step at lr 0
    if 0 < w < total:
        assert ours[w] == pytest.approx(0.1)  # the peak right after the warmup
        progress = (total - 1 - w) / (total - w)
        decayed = {"linear": 1 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress)), "constant": 1.0}[name]
        assert ours[total - 1] == pytest.approx(0.1 * (floor + (1 - floor) * decayed))  # the last step, to the floor


def test_schedule_resumes_exactly_from_its_state_dict(tmp_path):
    """The trainer checkpoints scheduler.state_dict() and loads it with weights_only=True."""
    import torch

    from lmreason.training.optim import build_scheduler

    cfg = OmegaConf.create({"name": "cosine", "warmup_steps": 0.2, "min_lr_ratio": 0.1})
    full = lr_curve(lambda opt: build_scheduler(opt, cfg, 20), 20)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(optimizer, cfg, 20)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = build_scheduler(optimizer, cfg, 20)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rest = []
    for _ in range(13):
        rest.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rest == full[7:20]
