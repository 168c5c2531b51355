"""Every command in README.md's code blocks runs as typed (issue 17 item 1): the README cannot document a command
that fails.

Each `lmreason ...` line of a fenced block (also after a pipe, `\\` continuations joined, split as a shell would) runs
in README order, in-process (`lmreason.cli.main`), in one temporary working directory, with the substitutions in
the tables below where the real thing is slow or needs the network, and `<run dir>`-style placeholders filled from
an earlier command. Every other line of a ```bash block must be in SKIPPED with its reason: a new README command
is either run here or skipped on purpose, never silently untested.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REPO
from omegaconf import OmegaConf

README = REPO / "README.md"
SHELL_BLOCKS = ("bash", "sh", "shell")

# --------------------------------------------------------------------------- what is not run, and why
# A README command line matching one of these (re.search) is skipped with the reason given.
SKIPPED = {
    r"^bash scripts/install\.sh": "installs packages into the environment "
    "(the demo's steps are the lmreason commands run here)",
    r"^mkdir -p sst2 && python3 -c .*load_dataset": "downloads SST-2 from the Hugging Face hub (no network here); "
    "a tiny sst2/ in the layout that line writes stands in (SST2_ROWS)",
    r"^python scripts/remedies\.py": "the remedies experiment trains MiniLM for tens of minutes to hours; "
    "tests/test_remedies_script.py runs it on tiny data (slow) and checks its table",
    r"^pip install ": "installs packages into the environment (scripts/install.sh installs the extras the tests use)",
    r"^torchrun ": "several processes (DDP): tests/test_distributed.py runs lmreason under torchrun",
    r"^tensorboard ": "TensorBoard's own server, not lmreason (tests/test_finetune.py reads the runs' event files)",
    r"^lmreason .*hydra/launcher=slurm": "submits to SLURM, which this machine has not "
    "(tests/test_sweeps.py composes it)",
    r"^lmreason evaluate compare=": "needs two evaluated runs of the same data; tests/test_report_page.py runs "
    "compare= on evaluated runs",
    r"^lmreason finetune 'regularization=\[l2,adversarial\]'": "2-4x the passes of a plain run, and run here "
    "they would become the run later run=<run_dir> lines evaluate; tests/test_adversarial.py trains with these "
    "options (fgm, pgd, freelb, with l2) on tiny-bert and tiny-gpt",
    r"^lmreason finetune task=multi ": "multi-task entries compose their own data (the full reasoning sizes, "
    "../shared/data/rte): tests/test_multitask.py trains task=multi on tiny data",
    r"^lmreason evaluate (run=<run.dir> head=rte|checkpoint=<run.dir>/checkpoints/best/heads/rte)": "needs a "
    "task=multi run (skipped above): tests/test_multitask.py evaluates its heads",
}

# --------------------------------------------------------------------------- substitutions (slow or networked -> small)
# The packaged pretrained models train and generate for minutes on 2 CPU cores: the tiny random-init ones with the
# same tokenizers stand in.
MODELS = {"model=bert": "model=tiny-bert", "model=gpt": "model=tiny-gpt"}
# `prepare`/`finetune` without model= would load the packaged MiniLM (model=bert).
DEFAULT_MODEL = "model=tiny-bert"
# checkpoint=smollm2-135m-instruct converts the packaged 135M GGUF once (~40 s) and generates with 135M parameters:
# a tiny random decoder saved with SmolLM2's tokenizer and chat template stands in (fixture tiny_smollm2).
CHECKPOINTS = {"checkpoint=smollm2-135m-instruct": "checkpoint={tiny_smollm2}"}
# README values sized for the real models -> values for the tiny ones.
WORDS = {
    "train.max_steps=100": "train.max_steps=4",
    "train.eval_every_steps=50": "train.eval_every_steps=2",
    "regularization.freeze_layers=22": "regularization.freeze_layers=1",  # SmolLM2 has 30 layers, tiny-gpt 2
    "hydra.sweeper.n_trials=50": "hydra.sweeper.n_trials=2",
}
# README words that stand for "your other overrides" outside a run= placeholder: dropped.
DROPPED = {"..."}
# Added to a finetune that does not set them: a few steps on the CPU.
FINETUNE_ADDED = {"train.max_steps": "train.max_steps=4", "device": "device=cpu"}
# data=reasoning (the default of prepare/finetune) and data=chain_sum generate 2000+ problems by default.
SMALL_SIZES = "data.sizes={train: 32, validation: 16, test: 16, ood: 16}"
GENERATED_DATA = ("reasoning", "chain_sum")
# hparams_search=optuna runs 20 trials by default.
N_TRIALS = "hydra.sweeper.n_trials=2"
# A -m sweep over a list (`optimizer.lr=1e-5,3e-5,1e-4`) runs its first MAX_SWEEP_VALUES values.
MAX_SWEEP_VALUES = 2
# `<run dir>` (two words to a shell) is read as one placeholder word.
PLACEHOLDER_SPELLINGS = {"<run dir>": "<run_dir>"}
# Placeholders for an earlier command's output (the path as the user would type it, relative to the cwd):
# run=/resume=: the run dir of the latest single finetune (of the command's task=, if it gives one): README order makes
# that the run the text has just made (cls in Commands, gen in Generation).
RUN_PLACEHOLDERS = ("outputs/finetune/<date>/<time>", "<run_dir>", "...")
# ... except for what needs a classifier (the attack, attributions, calibration, export, backend=): the README's first
# run (the demo: task=cls, with test and OOD splits).
CLASSIFIER_ONLY = r"diagnostics\.robustness\.attack=|.*attribution|explain=true|backend=|.*calibrat"
SWEEP_PLACEHOLDERS = ("outputs/finetune/multirun/<date>/<time>",)  # sweep=: the latest multirun dir
# Files the commands read from the cwd, in the layout the README gives.
SST2_ROWS = {"train": 64, "dev": 32}  # sst2/train.csv, sst2/dev.csv: text,label (0 negative, 1 positive)
REVIEWS = ["a gripping, funny film", "it's fine", "long, and dull"]  # reviews.csv: a text column


# --------------------------------------------------------------------------- reading the README
@dataclass
class Line:
    text: str  # the command line, continuations joined
    section: str  # the README heading above it
    words: list[str] = field(default_factory=list)  # the lmreason argv (after any pipe), as a shell splits it
    stdin_command: str | None = None  # the shell command piped into it, if any
    skip: str | None = None  # why it is not run


def fenced_blocks(text: str) -> list[tuple[str, str, str]]:
    """(language, body, heading above it) for every ``` block."""
    blocks, heading = [], ""
    for match in re.finditer(r"^(#{2,4} [^\n]*)$|^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            blocks.append((match.group(2), match.group(3), heading))
    return blocks


def readme_lines() -> list[Line]:
    """Every command line of the README's shell code blocks (```bash, ```sh, ```shell); other blocks are a
    directory tree or a results table."""
    lines = []
    for language, body, heading in fenced_blocks(README.read_text()):
        if language not in SHELL_BLOCKS:
            continue
        for text in body.replace("\\\n", " ").splitlines():
            text = text.strip()
            if not text or text.startswith("#"):
                continue
            is_lmreason = text.startswith("lmreason ") or re.search(r"\|\s*lmreason ", text)
            line = Line(text, heading)
            for spelling, word in PLACEHOLDER_SPELLINGS.items():
                text = text.replace(spelling, word)
            line.skip = next((why for pattern, why in SKIPPED.items() if re.search(pattern, text)), None)
            if is_lmreason:
                piped = re.match(r"(.*?)\|\s*(lmreason .*)$", text)
                line.words = shlex.split(piped.group(2) if piped else text, comments=True)
                line.stdin_command = piped.group(1).strip() if piped else None
            lines.append(line)
    return lines


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    lines = readme_lines()
    unhandled = [line.text for line in lines if not line.words and not line.skip]
    assert not unhandled, f"README commands neither run by this test nor in its SKIPPED table: {unhandled}"
    unused = [pattern for pattern in SKIPPED if not any(re.search(pattern, line.text) for line in lines)]
    assert not unused, f"SKIPPED entries that match no README line any more: {unused}"
    run = [line for line in lines if line.words and not line.skip]
    assert len(run) >= 10 and all(
        line.words[1] in ("prepare", "finetune", "evaluate", "infer", "export") for line in run
    )
    assert any(line.stdin_command for line in run)  # the pipe was found


# --------------------------------------------------------------------------- from the README's words to what runs
def option(words: list[str], key: str) -> str | None:
    return next((w.split("=", 1)[1] for w in words if w.startswith(f"{key}=")), None)


def shorten_sweep(word: str) -> str:
    match = re.fullmatch(r"([\w.]+)=([^,()\[\]{}'\"]+(?:,[^,()\[\]{}'\"]+)+)", word)
    return f"{match.group(1)}={','.join(match.group(2).split(',')[:MAX_SWEEP_VALUES])}" if match else word


def substituted(words: list[str], runs: list[tuple[Path, str]], sweeps: list[Path], tiny_smollm2: Path) -> list[str]:
    """The argv that runs for a README line; `runs`: (run dir, task) of the single finetunes so far, in order."""
    command, args = words[1], words[2:]
    multirun = "-m" in args or "--multirun" in args
    out = []
    for word in args:
        key, eq, value = word.partition("=")
        if eq and key in ("run", "resume") and value in RUN_PLACEHOLDERS:
            needs_cls = command == "export" or any(re.match(CLASSIFIER_ONLY, w) for w in args)
            wanted = option(args, "task") or ("cls" if needs_cls else None)
            matching = [run for run, task in runs if wanted in (None, task)]
            assert matching, f"{word}: no earlier finetune to take the run dir from"
            # evaluate's default split is test: sst2/ runs have none
            needs_test = command == "evaluate" and option(args, "split") is None
            # a classifier-only or test-split line means the README's demo run (the first: it has test and OOD)
            demo = (needs_cls or needs_test) and not option(args, "task")
            word = f"{key}={matching[0] if demo else matching[-1]}"
        elif eq and key == "sweep" and value in SWEEP_PLACEHOLDERS:
            assert sweeps, f"{word}: no earlier multirun to take the sweep dir from"
            word = f"sweep={sweeps[-1]}"
        elif word in DROPPED:
            continue
        word = MODELS.get(word, word)
        word = CHECKPOINTS[word].format(tiny_smollm2=tiny_smollm2) if word in CHECKPOINTS else word
        word = WORDS.get(word, word)
        out.append(shorten_sweep(word) if multirun else word)
    if command in ("prepare", "finetune") and option(out, "model") is None:
        out.append(DEFAULT_MODEL)
    if command == "finetune":
        out += [added for key, added in FINETUNE_ADDED.items() if option(out, key) is None]
    data = option(out, "data") or (GENERATED_DATA[0] if command in ("prepare", "finetune") else None)
    if data in GENERATED_DATA and option(out, "data.sizes") is None:
        out.append(SMALL_SIZES)
    if option(out, "hparams_search") == "optuna" and option(out, "hydra.sweeper.n_trials") is None:
        out.append(N_TRIALS)
    return [words[0], command, *out]


def make_inputs(cwd: Path) -> None:
    """sst2/{train,dev}.csv (text,label, as the README's export writes them) and reviews.csv."""
    (cwd / "sst2").mkdir()
    positive, negative = ["great", "wonderful", "superb", "lovely"], ["awful", "boring", "dull", "terrible"]
    for split, n in SST2_ROWS.items():
        with open(cwd / "sst2" / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            for i in range(n):
                words = positive if i % 2 else negative
                writer.writerow(
                    [f"the film was {words[i // 2 % 4]}, {'long' if i % 3 else 'short'} and {split}", i % 2]
                )
    with open(cwd / "reviews.csv", "w", newline="") as f:
        csv.writer(f).writerows([["text"], *([t] for t in REVIEWS)])


@pytest.fixture(scope="module")
def tiny_smollm2(tmp_path_factory, cache_dir) -> Path:
    """A model dir like the converted smollm2-135m-instruct: SmolLM2's config (shrunk as model=tiny-gpt shrinks it),
    tokenizer and chat template, random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lmreason.config import config_dir
    from lmreason.models.packaged import resolve_model_path

    source = resolve_model_path("smollm2-135m-instruct-config", cache_dir)
    config = AutoConfig.from_pretrained(source)
    config.update(dict(OmegaConf.load(Path(config_dir()) / "model" / "tiny-gpt.yaml").config_overrides))
    torch.manual_seed(0)
    target = tmp_path_factory.mktemp("tiny-smollm2")
    AutoModelForCausalLM.from_config(config).save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


# --------------------------------------------------------------------------- running them
def run_in_process(argv: list[str], stdin: str | None, monkeypatch) -> int:
    """`lmreason <argv>` in this process, as the console script runs it; its exit status."""
    from hydra._internal import utils as hydra_utils

    from lmreason import cli

    saved = hydra_utils.run_and_report  # cli.main wraps it for its one-line errors: unwrapped after each command
    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", ["lmreason", *argv])
        if stdin is not None:
            patch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            code = cli.main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            hydra_utils.run_and_report = saved
    return code


def dirs(pattern: str, cwd: Path) -> set[Path]:
    return {p.relative_to(cwd) for p in cwd.glob(pattern) if p.is_dir()}


def check_outputs(
    words: list[str],
    cwd: Path,
    new_runs: set,
    new_sweeps: set,
    new_evals: set,
    out: str,
    started: float,
    stdin: str | None,
):
    """What the command should have written, where that is cheap to check; a message, or None when it holds."""
    command, args = words[1], words[2:]
    multirun = "-m" in args
    if command == "finetune" and multirun:
        if len(new_sweeps) != 1:
            return f"expected one new multirun dir, got {sorted(map(str, new_sweeps))}"
        jobs = sorted(p for p in (cwd / next(iter(new_sweeps))).iterdir() if (p / ".hydra").is_dir())
        statuses = [
            json.loads((job / "metrics.json").read_text())["status"] if (job / "metrics.json").is_file() else None
            for job in jobs
        ]
        if not jobs or any(s not in ("completed", "early_stopped") for s in statuses):
            return f"sweep jobs {[j.name for j in jobs]} ended {statuses}"
    elif command == "finetune":
        if len(new_runs) != 1:
            return f"expected one new run dir, got {sorted(map(str, new_runs))}"
        metrics = json.loads((cwd / next(iter(new_runs)) / "metrics.json").read_text())
        if metrics["status"] not in ("completed", "early_stopped"):
            return f"metrics.json status {metrics['status']}"
    elif command == "evaluate" and option(args, "sweep"):
        if not (cwd / option(args, "sweep") / "sweep_report.csv").is_file():
            return "no sweep_report.csv in the sweep dir"
    elif command == "evaluate":
        root = (
            cwd / option(args, "run")
            if option(args, "run")
            else (cwd / next(iter(new_evals)) if len(new_evals) == 1 else None)
        )
        metrics = root / "eval" / (option(args, "split") or "test") / "metrics.json" if root else None
        if metrics is None or not metrics.is_file() or metrics.stat().st_mtime < started:
            return f"no new {metrics}"
    elif command == "infer":
        output = option(args, "output")
        if output:
            rows = (
                [json.loads(line) for line in (cwd / output).read_text().splitlines()]
                if (cwd / output).is_file()
                else []
            )
            return None if len(rows) == len(REVIEWS) else f"{output}: {len(rows)} predictions, expected {len(REVIEWS)}"
        source = option(args, "input")
        given = (
            stdin.splitlines()
            if source == "-"
            else REVIEWS
            if source == "reviews.csv"
            else [w for w in args if w.startswith("text=")]
        )
        if not re.search(rf"\b{len(given)} predictions? in ", out):
            return f"expected {len(given)} predictions printed (one per text=, stdin line or reviews.csv row)"
    return None


@pytest.fixture
def process_state(monkeypatch):
    """What the commands change in this process, put back afterwards: threads, the root logger (Hydra configures it
    per run), the environment, joblib's worker processes (started in this test's cwd and environment)."""
    import logging

    import torch

    threads, root = torch.get_num_threads(), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for name in ("HF_HUB_DISABLE_PROGRESS_BARS", "TOKENIZERS_PARALLELISM"):  # set by the commands with setdefault
        monkeypatch.setenv(name, os.environ.get(name, "1" if name.startswith("HF") else "false"))
    yield
    torch.set_num_threads(threads)
    root.handlers[:], root.level = handlers, level
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:
        return
    if reusable_executor._executor is not None:
        reusable_executor._executor.shutdown(wait=True)


@pytest.mark.slow  # ~25 commands, 3 sweeps with joblib workers: ~2.5-5 min on 2 CPU cores
def test_readme_commands_run_as_typed(tmp_path, cache_dir, tiny_smollm2, monkeypatch, capfd, process_state):
    for name, value in (("LMREASON_CACHE_DIR", str(cache_dir)), ("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    make_inputs(tmp_path)
    runs, sweeps, failures, report = [], [], [], []
    for line in readme_lines():
        if line.skip or not line.words:
            report.append(f"skipped  {line.text}  ({line.skip})")
            continue
        argv = substituted(line.words, runs, sweeps, tiny_smollm2)
        stdin = None
        if line.stdin_command:  # e.g. printf 'great\nawful\n': the shell gives the text
            stdin = subprocess.run(line.stdin_command, shell=True, capture_output=True, text=True, check=True).stdout
        before = (
            dirs("outputs/finetune/*/*", tmp_path),
            dirs("outputs/finetune/multirun/*/*", tmp_path),
            dirs("outputs/evaluate/*/*", tmp_path),
        )
        started = time.time() - 1
        code = run_in_process(argv[1:], stdin, monkeypatch)
        seconds = time.time() - started - 1
        out, err = capfd.readouterr()
        new_sweeps = dirs("outputs/finetune/multirun/*/*", tmp_path) - before[1]
        new_runs = dirs("outputs/finetune/*/*", tmp_path) - before[0] - {p for p in before[1] | new_sweeps}
        new_runs = {p for p in new_runs if p.parts[2] != "multirun"}
        new_evals = dirs("outputs/evaluate/*/*", tmp_path) - before[2]
        typed = shlex.join(argv)
        report.append(f"{seconds:5.1f} s  {typed}")
        if code != 0:
            failures.append(f"[{line.section}] {line.text}\n  ran: {typed}\n  exit {code}:\n{(out + err)[-2500:]}")
            continue
        problem = check_outputs(argv, tmp_path, new_runs, new_sweeps, new_evals, out, started, stdin)
        if problem:
            failures.append(f"[{line.section}] {line.text}\n  ran: {typed}\n  {problem}\n{out[-1500:]}")
        if argv[1] == "finetune":
            runs += [
                (run, OmegaConf.load(tmp_path / run / ".hydra" / "config.yaml").task.name) for run in sorted(new_runs)
            ]
            sweeps += sorted(new_sweeps)
    with capfd.disabled():
        print("\n" + "\n".join(report))
    assert not failures, f"{len(failures)} README command(s) failed:\n\n" + "\n\n".join(failures)
