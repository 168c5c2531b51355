"""`lmreason <command> [overrides]`: a thin dispatcher in front of one Hydra app per command.

Hydra has no sub-commands, so the command word is popped from argv and that
command module's own `@hydra.main` runs with the rest. This keeps `--help`,
`--cfg job` and `-m` working per command. Nothing heavy is imported here:
`lmreason --help` must answer at once.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
from pathlib import Path

COMMANDS = {
    "prepare": "load, validate, split, tokenize and cache a dataset",
    "finetune": "fine-tune a pretrained model (checkpoints, TensorBoard, early stopping)",
    "evaluate": "metrics, per-slice and in-distribution vs OOD report for a run or checkpoint",
    "infer": "predict labels or generate answers for texts or a file",
    "export": "write a classifier as ONNX (fp32, int8), checked against PyTorch",
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
    # Checked against hydra-core 1.3.8 (the installed version: the private
    # `ConfigLoaderImpl._parse_overrides_and_create_caching_repo(self, config_name, overrides)`
    # returning (parsed overrides, CachingConfigRepository)); pyproject asks for >=1.3. If a
    # Hydra release renames it, the guard below leaves help unpatched: slower, same text.
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


# --------------------------------------------------------------------------- free text (infer)
def hydra_quoted(text: str) -> str:
    r"""`text` as a single-quoted Hydra override value that composes back to exactly `text`.

    Hydra's override grammar (hydra/grammar/OverrideLexer.g4, QUOTED_VALUE): inside '...' a quote is \' and
    only backslashes right before a quote or the closing quote are escapes (so they are doubled); everything
    else (commas, brackets, `=`, newlines, non-ASCII) is literal. OmegaConf then reads `${` as an
    interpolation: `\${` is a literal one (backslashes right before it doubled too).
    """
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def _typed_texts(value: str) -> list[str]:
    """The texts in one `text=` value: as typed, unless the whole value is a Hydra quoted string (`text='...'`)
    or list (`text=[a,b]`, `text="['a, b',c]"`), which keep their Hydra meaning."""
    stripped = value.strip()
    hydra_form = (stripped[:1] == "[" and stripped[-1:] == "]") or (
        len(stripped) >= 2 and stripped[0] in "'\"" and stripped[-1] == stripped[0]
    )
    if hydra_form:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException

        try:
            parsed = OverridesParser.create().parse_override(f"text={stripped}").value()
        except HydraException:
            parsed = None
        if isinstance(parsed, list) and parsed:
            return ["" if t is None else str(t) for t in parsed]
        if isinstance(parsed, str):
            return [parsed]
    return [value]


def verbatim_texts(args: list[str]) -> list[str]:
    """`infer`'s `text=...` arguments as one override Hydra takes verbatim; each `text=` adds texts.

    Hydra would read `text=a gripping, funny film` as a sweep ("Ambiguous value") and `text=it's fine`
    as an unclosed quote; here every `text=` value is the text itself (see `_typed_texts` for the two
    Hydra forms kept) and the texts travel as quoted strings.
    """
    texts: list[str] = []
    position = None
    rest = []
    for arg in args:
        if arg.startswith("text="):
            position = len(rest) if position is None else position
            texts += _typed_texts(arg[len("text=") :])
        else:
            rest.append(arg)
    if position is None:
        return list(args)
    override = "text=" + (hydra_quoted(texts[0]) if len(texts) == 1 else "[" + ",".join(map(hydra_quoted, texts)) + "]")
    return [*rest[:position], override, *rest[position:]]


# --------------------------------------------------------------------------- the config files
def _conf() -> Path:
    from lmreason.config import config_dir

    return Path(config_dir())


def _defaults_list(command: str) -> list[tuple[str, str, str]]:
    """(group, default option, comment) for each group in conf/<command>.yaml's defaults list."""
    groups, in_defaults = [], False
    for line in (_conf() / f"{command}.yaml").read_text().splitlines():
        if re.match(r"^defaults:", line):
            in_defaults = True
            continue
        if in_defaults and not line.startswith(" "):
            break
        match = re.match(r"^\s+-\s+([\w/]+):\s*([\w-]+)\s*(?:#\s*(.*))?$", line)
        if in_defaults and match and "/" not in match.group(1):
            groups.append((match.group(1), match.group(2), match.group(3) or ""))
    return groups


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (_conf() / group).glob("*.yaml"))


def _own_lines(path: Path) -> list[str]:
    """A config file's key lines (with their comments), without its header comment, defaults list and hydra block."""
    lines, skipping = [], True
    for line in path.read_text().splitlines():
        if re.match(r"^(defaults|hydra):", line):
            skipping = True
            continue
        if skipping and (line.startswith((" ", "#")) or not line.strip()):
            continue
        skipping = False
        lines.append(line)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def key_comment(command: str, key: str, choices: dict | None = None) -> str:
    """The YAML comment of a dotted key (`data.path`), read from the config file that sets it."""
    group, _, leaf = key.partition(".")
    if leaf and choices and choices.get(group):
        path, wanted = _conf() / group / f"{choices[group]}.yaml", leaf
    else:
        path, wanted = _conf() / f"{command}.yaml", key
    if not path.is_file():
        return ""
    stack: list[tuple[int, str]] = []
    for line in path.read_text().splitlines():
        match = re.match(r"^(\s*)([\w-]+):.*?(?:#\s*(.*))?$", line)
        if not match or line.lstrip().startswith("#"):
            continue
        indent = len(match.group(1))
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, match.group(2))]
        if ".".join(k for _, k in stack) == wanted:
            return (match.group(3) or "").strip()
    return ""


# --------------------------------------------------------------------------- help
def command_help(
    command: str, choices: dict | None = None, overrides: list[str] | None = None, examples: str = ""
) -> str:
    """`lmreason <command> --help`: what the command does, the examples of conf/hydra/help/<command>.yaml, the
    groups the command takes with their options (the default first), then its keys with their YAML comments;
    a group picked on the help line (`--help data=local`) also shows that option's keys."""
    lines = [
        f"lmreason {command}: {COMMANDS[command]}",
        "",
        *examples.rstrip().splitlines(),
        "",
        "== Configuration groups == (group=option; the first is the default)",
    ]
    picked = {}
    taken = [group for group, _, _ in _defaults_list(command)]
    for group, default, comment in _defaults_list(command):
        options = [o for o in group_options(group) if o != default]
        lines.append(f"{group}: {', '.join([default, *options])}" + (f"   ({comment})" if comment else ""))
        chosen = (choices or {}).get(group)
        if any(o.split("=")[0].lstrip("+~") == group for o in overrides or []) and chosen:
            picked[group] = chosen
    lines += ["", f"== Config == (key=value overrides any key; the full config: lmreason {command} --cfg job)"]
    lines += _own_lines(_conf() / f"{command}.yaml")
    for group, option in picked.items():
        path = _conf() / group / f"{option}.yaml"
        bases = re.findall(r"^\s+-\s+([\w-]+)\s*$", path.read_text().split("\n_self_")[0], re.M)  # `- bert`: extends it
        title = f"{group}={option}" + "".join(f" (on top of {group}={base})" for base in bases if base != "_self_")
        lines += [f"{group}:  # {title}", *("  " + line if line else line for line in _own_lines(path))]
    pick = next(
        (f"{g}={o}" for g, o in (("data", "local"), ("model", "gpt"), ("generation", "sample")) if g in taken), ""
    )
    lines += [
        "",
        (f"`lmreason {command} --help {pick}` adds that option's keys; " if pick else "")
        + "--hydra-help: Hydra's flags (-m, --cfg, --info, ...).",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- one-line config errors
def _all_keys(node, prefix: str = "") -> list[str]:
    """Every dotted key of a config node (nested dicts included), without resolving any value."""
    from omegaconf import DictConfig

    keys = []
    if isinstance(node, DictConfig) and not node._is_none() and not node._is_missing():
        for key in node.keys():
            dotted = f"{prefix}{key}"
            keys.append(dotted)
            keys += _all_keys(node._get_node(key), dotted + ".")
    return keys


def _nearest(wrong: str, candidates: list[str]) -> str | None:
    """The valid dotted key a misspelt one most likely meant: a sibling (optimizer.lrr -> optimizer.lr), a key
    elsewhere (train.early_stoping.patience), or for a top-level key the one whose last part it is
    (lr -> optimizer.lr)."""
    parent, _, leaf = wrong.rpartition(".")
    prefix = f"{parent}." if parent else ""
    siblings = [c[len(prefix) :] for c in candidates if c.startswith(prefix) and "." not in c[len(prefix) :]]
    close = [prefix + m for m in difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.7)]
    close = close or difflib.get_close_matches(wrong, candidates, n=1, cutoff=0.85)
    if not close and not parent:
        by_leaf = {}
        for candidate in sorted(candidates, key=lambda c: c.count(".")):
            by_leaf.setdefault(candidate.rsplit(".", 1)[-1], candidate)
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.8)]
    return close[0] if close else None


def _what_it_takes(command: str) -> str:
    groups = [group for group, _, _ in _defaults_list(command)]
    keys = [line.split(":")[0] for line in _own_lines(_conf() / f"{command}.yaml") if re.match(r"^\w+:", line)]
    return f"{command} takes {', '.join(g + '=' for g in groups)} and {', '.join(keys)} (lmreason {command} --help)"


def config_error_line(command: str, exc: BaseException, overrides: list[str]) -> str | None:
    """One line for a mistake Hydra found while composing the config (None: not a config mistake).

    Hydra's own report is several lines ending in HYDRA_FULL_ERROR; this says which key or option is
    wrong and what to give instead (the nearest valid key, the options of the group).
    """
    from hydra.errors import (
        ConfigCompositionException,
        HydraException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

    if not isinstance(exc, (HydraException, OmegaConfBaseException)):
        return None
    cause = exc.__cause__
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, option = exc.missing_cfg_file.rsplit("/", 1)
        options = exc.options or group_options(group)
        nearest = _nearest(option, options)
        return f"{group}={option}: no such option; {group} takes {', '.join(options)}" + (
            f" (did you mean {group}={nearest}?)" if nearest else ""
        )
    if isinstance(exc, OverrideParseException):
        return (
            f"cannot read the override {getattr(exc, 'override', '')!r} ({str(exc).splitlines()[0]}); "
            "quote a value holding brackets, commas or quotes: key='a, b'"
        )
    if (
        isinstance(cause, (ConfigKeyError, AttributeError))
        and getattr(cause, "full_key", None)
        and not isinstance(cause, ValidationError)
        and getattr(cause, "parent_node", None) is not None
    ):
        full_key, parent = cause.full_key, cause.parent_node
        owner = getattr(cause, "object_type", None)
        where = f"a key of {owner.__name__}" if isinstance(owner, type) and owner is not dict else "a key there"
        in_hydra = full_key.startswith("hydra.")  # Hydra's own keys are suggested only for a hydra.* key
        nearest = _nearest(full_key, [k for k in _all_keys(parent._get_root()) if k.startswith("hydra.") == in_hydra])
        if nearest:
            return f"{full_key} is not {where}; did you mean {nearest}?"
        siblings = [str(k) for k in parent.keys()]
        return f"{full_key} is not {where}; its keys are {', '.join(siblings)}"
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        value = next(
            (o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=")[0] == cause.full_key and "=" in o), None
        )
        message = str(cause).splitlines()[0]
        return f"{cause.full_key}" + (f"={value}" if value is not None else "") + f": {message}"
    match = re.match(r"Could not override '([^']+)'\. No match in the defaults list", str(exc))
    if isinstance(exc, ConfigCompositionException) and match:
        group = match.group(1)
        hint = ""
        if command in ("infer", "evaluate") and group in ("model", "task"):
            value = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"{group}=")), "")
            packaged = _packaged_name(value) if group == "model" else ""
            hint = (
                ": the model and its task come from run=<finetune run dir> or checkpoint=<model dir or packaged name>"
                + (f" ({group}={value}: checkpoint={packaged})" if packaged else "")
            )
        return f"{command} takes no {group}={hint}; {_what_it_takes(command)}"
    text = " ".join(str(exc).split())
    if isinstance(cause, OmegaConfBaseException):
        text += ": " + str(cause).splitlines()[0]
    return text


def _packaged_name(model_option: str) -> str:
    """conf/model/<option>.yaml's name_or_path when it is a packaged model name (gpt -> smollm2-135m-instruct)."""
    path = _conf() / "model" / f"{model_option}.yaml"
    match = re.search(r"^name_or_path:\s*([\w.-]+)", path.read_text(), re.M) if path.is_file() else None
    return match.group(1) if match else ""


def report_config_errors_in_one_line(command: str, overrides: list[str]) -> None:
    """Make a mistake Hydra finds while composing the config one line `lmreason <command>: error: ...` (exit 2).

    Hydra reports its errors inside `hydra._internal.utils.run_and_report`; the function it runs is wrapped so
    that a composition error becomes our line, while an exception from the command itself (marked by
    entry.hydra_command) keeps Hydra's report and traceback. Skipped if Hydra's internals differ from 1.3's.
    """
    try:
        from hydra._internal import utils as hydra_utils

        original = hydra_utils.run_and_report
    except (ImportError, AttributeError):
        return

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except Exception as exc:
                line = (
                    None if getattr(exc, "lmreason_in_command", False) else config_error_line(command, exc, overrides)
                )
                if line is None:
                    raise
                print(f"lmreason {command}: error: {line}", file=sys.stderr)
                sys.exit(2)

        return original(guarded)

    hydra_utils.run_and_report = run_and_report


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
        print(
            "lmreason: -m (multirun) cannot run under torchrun: every process would start its own sweep. "
            "Sweep without torchrun, or launch one torchrun per job",
            file=sys.stderr,
        )
        return 2
    passive_openmp_wait()  # before the command module (and through it torch) is imported
    module = importlib.import_module(f"lmreason.commands.{command}")
    if any(arg in ("-h", "--help", "--hydra-help") for arg in argv[1:]):
        share_group_listing()
    overrides = verbatim_texts(argv[1:]) if command == "infer" else argv[1:]
    if os.environ.get("HYDRA_FULL_ERROR") != "1":  # asked for Hydra's full reports: leave them be
        report_config_errors_in_one_line(command, overrides)
    # Hydra reads sys.argv itself; argv[0] names the app in its help and logs.
    extra = [*torchrun_worker_overrides(argv), *resume_overrides(argv[1:])] if command == "finetune" else []
    sys.argv = [f"lmreason {command}", *overrides, *extra]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
