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


def resume_overrides(argv: list[str]) -> list[str]:
    """`finetune resume=<run dir>` logs into that run's own dir, not a second Hydra run dir.

    Hydra's run dir becomes the run dir (so <run>/finetune.log gets the resumed part appended: Hydra's
    file handler opens it in append mode), and Hydra writes no .hydra/ there (the run's own composed
    config stays as the run began; the resume uses the config saved with its checkpoint). Only for a
    dir that holds a run (checkpoints/) and when the user gave no hydra.run.dir / hydra.output_subdir:
    anything else goes to a fresh dir, which the failure then removes (commands/finetune.py).
    """
    if "-m" in argv or "--multirun" in argv or int(os.environ.get("RANK", "0")) > 0:
        return []
    values = [arg.split("=", 1)[1] for arg in argv if arg.startswith("resume=")]
    if not values or not values[-1] or any(arg.startswith(("hydra.run.dir=", "hydra.output_subdir=")) for arg in argv):
        return []
    run_dir = os.path.abspath(os.path.expanduser(values[-1]))
    if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
        return []
    return [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def passive_openmp_wait() -> None:
    """OpenMP threads sleep when idle instead of spinning (OMP_WAIT_POLICY=PASSIVE), unless the user
    chose a policy. On a shared machine spinning threads take the cores another job needs: measured on
    2 cores at load ~6 (tiny-bert, 150 steps), device.threads=2 trained at 25-28 samples/s with the
    default policy and 270-510 with PASSIVE (1 thread: 340-550). OpenMP reads the variable once, when
    torch first starts it, so it is set before torch is imported."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def share_group_listing() -> None:
    """Make `<command> --help` answer in ~0.4 s instead of ~2 s (same text).

    Hydra's help lists every config group (twice), and each listing deep-copies the whole
    config repository (every YAML and structured schema): ~110 copies, ~80% of the time.
    One help call lists from one unchanged repository, so the copy made for a given
    (config, overrides) is shared. Skipped if Hydra's internals differ from 1.3's.
    """
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        original = ConfigLoaderImpl._parse_overrides_and_create_caching_repo
    except (ImportError, AttributeError):
        return
    shared: dict = {}

    def parse_once(self, config_name, overrides):
        key = (id(self), config_name, tuple(overrides))
        if key not in shared:
            shared[key] = original(self, config_name, overrides)
        return shared[key]

    ConfigLoaderImpl._parse_overrides_and_create_caching_repo = parse_once


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
    passive_openmp_wait()  # before the command module (and through it torch) is imported
    module = importlib.import_module(f"lmreason.commands.{command}")
    if any(arg in ("-h", "--help", "--hydra-help") for arg in argv[1:]):
        share_group_listing()
    # Hydra reads sys.argv itself; argv[0] names the app in its help and logs.
    extra = [*torchrun_worker_overrides(argv), *resume_overrides(argv[1:])] if command == "finetune" else []
    sys.argv = [f"lmreason {command}", *argv[1:], *extra]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
