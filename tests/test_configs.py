"""Every shipped config composes and validates against its schema, for every command."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lmreason.config import config_dir

CONF = Path(config_dir())
GROUPS = {group: sorted(p.stem for p in (CONF / group).glob("*.yaml")) for group in
          ("model", "task", "data", "optimizer", "scheduler", "regularization", "device", "generation")}
COMMAND_GROUPS = {
    "prepare": ("model", "task", "data"),
    "finetune": ("model", "task", "data", "optimizer", "scheduler", "regularization", "device", "generation"),
    "evaluate": ("data", "task", "device", "generation"),
    "infer": ("device", "generation"),
}
REQUIRED = {"local": ["data.path=x.csv"], "sst2": ["data.path=sst2"], "bigbench": ["data.path=task.json"],
            "hub": ["data.dataset_id=glue"]}


def cases():
    for command, groups in COMMAND_GROUPS.items():
        for group in groups:
            for option in GROUPS[group]:
                yield command, group, option


def own_values(group: str, option: str) -> dict:
    """The keys an option's YAML sets itself (its `defaults:` end with `_self_`: these win over what it extends)."""
    values = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"), resolve=False)
    values.pop("defaults", None)
    return values


@pytest.mark.parametrize("command,group,option", list(cases()))
def test_every_option_composes(command, group, option):
    required = REQUIRED.get(option, []) if group == "data" else []
    overrides = [f"{group}={option}", *required]
    if group == "task" and option == "gen" and command in ("prepare", "finetune"):
        overrides += ["model=tiny-gpt"] if (CONF / "model" / "tiny-gpt.yaml").exists() else []
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose(config_name=command, overrides=overrides + ["output_dir=/tmp/x", "cache_dir=/tmp/c"])
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert container[group] is not None
    # The option was applied: every value its file sets is the composed value (a required ??? one: the override's).
    composed = OmegaConf.to_container(cfg[group], resolve=False, enum_to_str=True)
    given = {o.split("=", 1)[0].split(".", 1)[1]: o.split("=", 1)[1] for o in required}
    for key, value in own_values(group, option).items():
        expected = given[key] if value == "???" else value
        assert composed[key] == expected, f"{command}: {group}={option} sets {key}={expected!r}, composed {composed[key]!r}"
    assert (container["output_dir"], container["cache_dir"]) == ("/tmp/x", "/tmp/c")


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
