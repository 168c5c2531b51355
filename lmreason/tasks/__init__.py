"""Tasks: what differs between classification and generation (tokenization, model, loss, metrics).

The training loop, batching, checkpoints and logging are shared; a task plugs in through
the small interface described in `lmreason.tasks.base`. A task is built from its config
group (`task=cls|gen`), so it never needs the rest of the run's config to know its settings.
"""

from __future__ import annotations

from lmreason.errors import UserError

TASKS = ("cls", "gen", "multi")


def get_task(task_cfg):
    """The task for a `task` config group (or just its name: defaults for every setting)."""
    name = task_cfg if isinstance(task_cfg, str) else task_cfg.name
    settings = None if isinstance(task_cfg, str) else task_cfg
    if name == "cls":
        from lmreason.tasks.cls import ClassificationTask

        return ClassificationTask()
    if name == "gen":
        from lmreason.tasks.gen import GenerationTask

        return GenerationTask(settings)
    if name == "multi":
        from lmreason.tasks.multi import MultiTask

        return MultiTask(settings)
    raise UserError(f"task={name} is unknown; use one of {', '.join(TASKS)}")
