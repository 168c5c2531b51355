"""task=multi's `task.tasks` entries -> one checked data config per task (no torch, no data read).

An entry is `{data: <option of conf/data/>, <keys of that option>...}`: it is composed exactly as
`data=<option> data.<key>=<value>` would be (the option's YAML on its schema, then the keys), so a
misspelt key or a wrong type fails naming the entry. The data config's `name` becomes the task name
(what reports show), unless the entry sets one.

Names: a task name becomes a metric key (`val/<task>/acc`) and a directory (`heads/<task>/`), so it
must be letters, digits, `_` or `-`; two names clash when they differ only in case or in `-` vs `_`
(`RTE` and `rte`, `nli-1` and `nli_1`): the same directory on a case-insensitive filesystem, and
metric keys a reader cannot tell apart. (An exact duplicate cannot reach here: YAML and Hydra's
override parser keep the last of two equal keys.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lmreason.errors import UserError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MONITORED = ("loss", "acc", "f1_macro", "ece")  # what lmreason.tasks.multi reports per task and as the mean


@dataclass
class TaskEntry:
    name: str  # the task's name (a key of task.tasks)
    option: str  # the conf/data option it composes
    data: DictConfig  # the composed data config


def data_options() -> list[str]:
    from lmreason.config import config_dir

    return sorted(p.stem for p in (Path(config_dir()) / "data").glob("*.yaml"))


def clash_key(name: str) -> str:
    return name.lower().replace("-", "_")


def check_names(names: list[str]) -> None:
    """Raises UserError for fewer than two tasks, a malformed name, or two names that clash."""
    if len(names) < 2:
        shown = f"has one task ({names[0]})" if names else "is empty"
        raise UserError(
            f"task.tasks {shown}; multi-task training needs at least two, e.g. "
            "'task.tasks={syllogism: {data: reasoning}, rte: {data: local, path: ...}}' "
            "(one task: use task=cls data=...)"
        )
    seen: dict[str, str] = {}
    for name in names:
        if not NAME.fullmatch(name):
            raise UserError(
                f"task.tasks.{name}: a task name is letters, digits, _ and - "
                "(it names val/<task>/acc and heads/<task>/)"
            )
        other = seen.setdefault(clash_key(name), name)
        if other != name:
            raise UserError(
                f"task.tasks: names {other} and {name} clash (they differ only in case or -/_, and would share "
                f"heads/{clash_key(name)}/ on a case-insensitive disk); rename one"
            )


def resolve_tasks(task_cfg: DictConfig) -> list[TaskEntry]:
    """Every entry of `task_cfg.tasks` composed and checked, in the given order.

    Raises:
        UserError: see `check_names`; an entry without `data`, an unknown data option, a key that option lacks.
    """
    tasks = task_cfg.get("tasks") or {}
    names = [str(name) for name in tasks]
    check_names(names)
    options = data_options()
    entries = []
    for name in names:
        entry = tasks[name]
        if not isinstance(entry, (dict, DictConfig)) or "data" not in entry:
            raise UserError(
                f"task.tasks.{name}: give the data option it uses, "
                "e.g. {data: reasoning} or {data: local, path: ...}"
            )
        option = str(entry["data"])
        if option not in options:
            raise UserError(f"task.tasks.{name}.data={option}: not a data option; choose one of {', '.join(options)}")
        overrides = {k: v for k, v in OmegaConf.to_container(OmegaConf.create(dict(entry)), resolve=True).items()}
        overrides.pop("data")
        overrides.setdefault("name", name)
        entries.append(TaskEntry(name, option, _compose(name, option, overrides)))
    return entries


def _compose(name: str, option: str, overrides: dict) -> DictConfig:
    """conf/data/<option>.yaml on its schema (through Hydra, as `data=<option>` composes it), then `overrides`."""
    from omegaconf.errors import OmegaConfBaseException

    data = _compose_option(option)
    try:
        merged = OmegaConf.merge(data, overrides)
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", None) or getattr(exc, "key", None) or "?").removeprefix("data.")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"task.tasks.{name}.{key}: {first[:160]} (data={option} keys are those of conf/data/{option}.yaml)"
        ) from None
    missing = [k for k in merged if OmegaConf.is_missing(merged, k)]
    if missing:
        raise UserError(
            f"task.tasks.{name}.{missing[0]} is required by data={option}; add {missing[0]}: ... to the entry"
        )
    return merged


_COMPOSED: dict[str, DictConfig] = {}


def _compose_option(option: str) -> DictConfig:
    """Hydra's composition of `+data=<option>` (its defaults list, schema and all); cached per process."""
    if option not in _COMPOSED:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from lmreason.config import config_dir

        if GlobalHydra.instance().is_initialized():  # inside a command's @hydra.main: its search path has conf/
            composed = compose(overrides=[f"+data={option}"])
        else:
            with initialize_config_dir(config_dir=config_dir(), version_base=None):
                composed = compose(overrides=[f"+data={option}"])
        _COMPOSED[option] = composed.data
    return _COMPOSED[option].copy()
