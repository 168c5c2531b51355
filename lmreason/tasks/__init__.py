"""Tasks: what differs between classification and generation (tokenization, model, loss, metrics).

The training loop, batching, checkpoints and logging are shared; a task plugs in
through the small interface of `ClassificationTask`.
"""

from __future__ import annotations

from lmreason.errors import UserError

TASKS = ("cls", "gen")


def get_task(name: str):
    if name == "cls":
        from lmreason.tasks.cls import ClassificationTask

        return ClassificationTask()
    if name == "gen":
        from lmreason.tasks.gen import GenerationTask

        return GenerationTask()
    raise UserError(f"task={name} is unknown; use one of {', '.join(TASKS)}")
