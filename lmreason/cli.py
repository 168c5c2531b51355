"""`lmreason <command> [overrides]`: a thin dispatcher in front of one Hydra app per command.

Hydra has no sub-commands, so the command word is popped from argv and that
command module's own `@hydra.main` runs with the rest. This keeps `--help`,
`--cfg job` and `-m` working per command. Nothing heavy is imported here:
`lmreason --help` must answer at once.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "prepare": "load, validate, split, tokenize and cache a dataset",
    "finetune": "fine-tune a pretrained model (checkpoints, TensorBoard, early stopping)",
    "evaluate": "metrics, per-slice and in-distribution vs OOD report for a run or checkpoint",
    "infer": "predict labels or generate answers for texts or a file",
}

USAGE = "usage: lmreason {" + ",".join(COMMANDS) + "} [overrides] [--help] [-m] [--cfg job]"


def usage_text() -> str:
    lines = [USAGE, "", "commands:"]
    lines += [f"  {name:<9} {summary}" for name, summary in COMMANDS.items()]
    lines += [
        "",
        "Each command is a Hydra app: `lmreason finetune --help` shows its config groups;",
        "override any key (`optimizer.lr=3e-5`), pick group options (`model=tiny-bert`),",
        "sweep with -m (`lmreason finetune -m optimizer.lr=1e-5,3e-5`).",
    ]
    return "\n".join(lines)


def torchrun_worker_overrides(argv: list[str]) -> list[str]:
    """Under torchrun every rank runs `finetune`. Ranks other than 0 write no Hydra files (config, log):
    they share rank 0's run dir, which the trainer broadcasts (their own `${now:...}` dir would differ)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0:
        return []
    overrides = ["hydra.run.dir=.", "hydra.output_subdir=null"]
    if not any(arg.startswith(("hydra/job_logging=", "override hydra/job_logging")) for arg in argv):
        overrides.append("hydra/job_logging=none")  # no <run>/finetune.log from this rank; warnings still reach stderr
    return overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage_text())
        return 0
    if argv[0] == "--version":
        from lmreason import __version__

        print(f"lmreason {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(f"lmreason: unknown command '{command}'. {USAGE}", file=sys.stderr)
        return 2
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and ("-m" in argv or "--multirun" in argv):
        print("lmreason: -m (multirun) cannot run under torchrun: every process would start its own sweep. "
              "Sweep without torchrun, or launch one torchrun per job", file=sys.stderr)
        return 2
    module = importlib.import_module(f"lmreason.commands.{command}")
    # Hydra reads sys.argv itself; argv[0] names the app in its help and logs.
    sys.argv = [f"lmreason {command}", *argv[1:], *(torchrun_worker_overrides(argv) if command == "finetune" else [])]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
