"""The first hour of a new user: free text as typed, dict options, one-line config mistakes, help that helps.

In-process where the CLI's own functions decide (argv rewriting, composition, messages, help text);
a subprocess only where the process boundary is the point (exit status, stderr, no run dir, help output).
"""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli_env
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lmreason.cli import command_help, config_error_line, verbatim_texts
from lmreason.commands.entry import missing_value_message
from lmreason.commands.infer import read_inputs
from lmreason.config import config_dir

COMMANDS = ("prepare", "finetune", "evaluate", "infer", "export")
TRICKY = [
    "a gripping, funny film",
    "it's fine",
    "line one\nline two",
    'she said "hi"',
    "[citation needed] good",
    "{k: v}",
    "a=b",
    "é 日本語 🙂",
    "${oc.env:HOME}",
    "back\\slash",
    "ends in \\",
    "\\'",
    "'",
    "(x) :y, z",
    "null",
    "1.5",
    "  padded  ",
    "tab\there",
    "50% $5 off",
]


def compose_cfg(command: str, overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return compose(config_name=command, overrides=overrides, return_hydra_config=hydra)


def compose_error(command: str, overrides: list[str]) -> BaseException:
    with pytest.raises(Exception) as caught:
        compose_cfg(command, overrides)
    return caught.value


def lmreason(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmreason", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(cwd / "cache"),
        timeout=300,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    """The contract: non-zero status, stderr exactly one line `lmreason <command>: error: ...`, no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stdout
    assert len(lines) == 1 and lines[0].startswith(f"lmreason {command}: error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- 1. free text as typed
def test_every_text_composes_back_exactly_as_typed():
    for text in TRICKY:
        assert compose_cfg("infer", verbatim_texts([f"text={text}"])).text == text
    cfg = compose_cfg("infer", verbatim_texts(["run=x", *(f"text={t}" for t in TRICKY), "device=cpu"]))
    assert read_inputs(cfg) == (TRICKY, None)  # repeated text= appends, in order
    assert cfg.run == "x" and cfg.device.device == "cpu"


def test_hydra_list_and_quoted_forms_keep_their_meaning():
    assert list(compose_cfg("infer", verbatim_texts(["text=[the film was great,dull]"])).text) == [
        "the film was great",
        "dull",
    ]
    assert list(compose_cfg("infer", verbatim_texts(["text=['a, b',c]", "text=d"])).text) == ["a, b", "c", "d"]
    assert compose_cfg("infer", verbatim_texts(["text='Question: 3 + 4 ='"])).text == "Question: 3 + 4 ="
    assert verbatim_texts(["input=a.csv", "output=b.jsonl"]) == ["input=a.csv", "output=b.jsonl"]


def test_stdin_and_txt_files_give_one_text_per_line(tmp_path, monkeypatch):
    lines = ["a gripping, funny film", "it's fine \f with a form feed", '{"not": json}', "tab\there \u2028 still one"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines[:2]) + "\r\n\n" + "\n".join(lines[2:]) + "\n"))
    assert read_inputs(compose_cfg("infer", ["input=-"])) == (lines, None)
    source = tmp_path / "texts.txt"
    source.write_text("\n".join(lines) + "\n\n")
    assert read_inputs(compose_cfg("infer", [f"input={source}"])) == (lines, None)


def test_infer_from_the_shell_takes_text_as_typed(tmp_path, finished_run):
    output = tmp_path / "predictions.jsonl"
    texts = ["a gripping, funny film", "it's fine", "two\nlines, [brackets] and a=b é"]
    proc = lmreason(
        "infer", f"run={finished_run}", *(f"text={t}" for t in texts), f"output={output}", "device=cpu", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["text"] for line in output.read_text().splitlines()] == texts
    proc = lmreason(
        "infer",
        f"run={finished_run}",
        "input=-",
        f"output={output}",
        "device=cpu",
        cwd=tmp_path,
        stdin="great, really\nawful\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["text"] for line in output.read_text().splitlines()] == ["great, really", "awful"]


# --------------------------------------------------------------------------- 1. dict options take new keys
@pytest.mark.parametrize(
    "source, given",
    [
        ("sst2", "data.path=x"),
        ("local", "data.path=x"),
        ("bigbench", "data.path=x"),
        ("hub", "data.dataset_id=a/b"),
        ("reasoning", None),
        ("chain_sum", None),
        ("family", None),
    ],
)
def test_max_rows_takes_new_keys_for_every_data_option(source, given):
    cfg = compose_cfg("finetune", [f"data={source}", *([given] if given else []), "data.max_rows={train: 4000}"])
    assert cfg.data.max_rows == {"train": 4000}
    cfg = compose_cfg("prepare", [f"data={source}", *([given] if given else []), "data.max_rows.test=7"])
    assert cfg.data.max_rows == {"test": 7}


def test_other_dict_options_take_new_keys_but_keys_and_types_stay_checked():
    assert compose_cfg(
        "finetune", ["data=hub", "data.dataset_id=a/b", "data.split_names={validation: dev}"]
    ).data.split_names == {"validation": "dev"}
    assert compose_cfg("finetune", ["data.ood_config={extra: 1}"]).data.ood_config.extra == 1
    assert compose_cfg("finetune", ["model.config_overrides={num_hidden_layers: 2}"]).model.config_overrides == {
        "num_hidden_layers": 2
    }
    assert "did you mean data.max_rows?" in config_error_line(
        "finetune", compose_error("finetune", ["data.max_rowz={train: 4}"]), []
    )
    error = compose_error("finetune", ["data=local", "data.path=x", "data.max_rows={train: many}"])
    assert "data.max_rows.train" in config_error_line("finetune", error, [])


def test_readme_commands_compose(tmp_path):
    """Every `lmreason` command of the README's Commands section composes (placeholders filled): no Hydra error."""
    section = Path(REPO, "README.md").read_text().split("## Commands", 1)[1].split("\n### ", 1)[0]
    commands = [
        line.split("|")[-1].strip()
        for block in re.findall(r"```bash\n(.*?)```", section, re.S)
        for line in block.splitlines()
        if "lmreason " in line
    ]
    assert len(commands) >= 8
    for line in commands:
        words = shlex.split(line.replace("<date>/<time>", "d/t"), comments=True)
        command, overrides = words[1], [w for w in words[2:] if w != "-m"]
        overrides = verbatim_texts(overrides) if command == "infer" else overrides
        cfg = compose_cfg(command, [o.replace(",3e-5", "") for o in overrides], hydra=True)
        assert missing_value_message(command, cfg, cfg.hydra.runtime.choices) is None, line


# --------------------------------------------------------------------------- 2. a config mistake is one line
def test_misspelt_keys_name_the_nearest_valid_key():
    for command, wrong, meant in (
        ("finetune", "optimizer.lrr=0.1", "optimizer.lr"),
        ("finetune", "lr=0.1", "optimizer.lr"),
        ("finetune", "train.early_stopping.patiance=2", "train.early_stopping.patience"),
        ("finetune", "epochs=2", "train.epochs"),
        ("prepare", "modl=bert", "model"),
        ("infer", "batchsize=2", "batch_size"),
        ("finetune", "hydra.run.dirr=x", "hydra.run.dir"),
    ):
        line = config_error_line(command, compose_error(command, [wrong]), [wrong])
        assert line.startswith(f"{wrong.split('=')[0]} is not a key") and line.endswith(f"did you mean {meant}?"), line
    line = config_error_line("prepare", compose_error("prepare", ["data=local", "data.task=x"]), [])
    assert "LocalDataConfig" in line and "path" in line  # no close key: the keys it has


def test_unknown_options_and_wrong_types_name_what_is_valid():
    line = config_error_line("finetune", compose_error("finetune", ["model=brt"]), ["model=brt"])
    assert line == "model=brt: no such option; model takes bert, gpt, tiny-bert, tiny-gpt (did you mean model=bert?)"
    line = config_error_line("finetune", compose_error("finetune", ["regularization=[l2,frieze]"]), [])
    assert "did you mean regularization=freeze?" in line
    line = config_error_line("finetune", compose_error("finetune", ["train.batch_size=big"]), ["train.batch_size=big"])
    assert line.startswith("train.batch_size=big: ") and "Integer" in line


def test_an_override_infer_does_not_take_says_what_it_takes():
    overrides = ["model=gpt", "task=gen", "text=hi"]
    line = config_error_line("infer", compose_error("infer", overrides), overrides)
    assert "infer takes no model=" in line and "checkpoint=smollm2-135m-instruct" in line
    assert "device=, generation=" in line and "checkpoint" in line and "\n" not in line


def test_missing_values_name_the_key_and_how_to_give_it():
    cfg = compose_cfg("finetune", ["data=sst2"], hydra=True)
    assert (
        missing_value_message("finetune", cfg, cfg.hydra.runtime.choices)
        == "data.path is required (data=sst2: directory holding train.csv and dev.csv); give it as data.path=<value>"
    )
    cfg = compose_cfg("prepare", ["data=hub"], hydra=True)
    assert missing_value_message("prepare", cfg, cfg.hydra.runtime.choices).startswith(
        "data.dataset_id is required (data=hub: "
    )
    cfg = compose_cfg("finetune", ["data=local", "data.path=x"], hydra=True)
    assert missing_value_message("finetune", cfg, cfg.hydra.runtime.choices) is None


@pytest.mark.parametrize(
    "args, expected",
    [
        (("finetune", "data=sst2"), "data.path is required"),
        (("finetune", "data=local", "model=tiny-bert"), "data.path is required"),
        (("finetune", "optimizer.lrr=0.1"), "did you mean optimizer.lr?"),
        (("infer", "model=gpt", "task=gen", "text=a, b"), "checkpoint=smollm2-135m-instruct"),
        (("finetune", "--cfg", "job", "device=gpu"), "device takes auto, cpu, cuda"),
    ],
)
def test_config_mistakes_are_one_line_before_any_work(tmp_path, args, expected):
    proc = lmreason(*args, cwd=tmp_path)
    line = assert_one_line_error(proc, args[0])
    assert proc.returncode == 2 and expected in line
    assert not (tmp_path / "outputs").exists()  # refused before Hydra made a run dir


def test_an_error_inside_a_command_keeps_its_traceback(tmp_path):
    """A bug (here an OmegaConf error raised by the command itself) is not mistaken for a config mistake."""
    code = (
        "import sys; from lmreason.commands import entry, infer; "
        "infer.main = entry.hydra_command('infer')(lambda cfg: cfg.no_such_key); "
        "from lmreason.cli import main; sys.exit(main(['infer', 'text=x']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(tmp_path / "cache"),
        timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "no_such_key" in proc.stderr
    assert "lmreason infer: error" not in proc.stderr


# --------------------------------------------------------------------------- 7. help that helps
@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_only_the_groups_and_keys_the_command_takes(command):
    text = command_help(command)
    groups = dict(line.split(": ", 1) for line in text.split("== Config ==")[0].splitlines()[1:] if ": " in line)
    primary = OmegaConf.load(Path(config_dir()) / f"{command}.yaml")
    expected = {
        next(iter(d)) for d in primary.defaults if OmegaConf.is_dict(d) and not next(iter(d)).startswith("override")
    }
    assert set(groups) == expected and "schema" not in text
    for key in primary:  # every key of the command, with its comment
        if key not in ("defaults", "hydra"):
            assert re.search(rf"^{key}:.*# \S", text, re.M) or re.search(rf"^{key}:\s*$", text, re.M), key
    assert "model" not in groups or groups["model"].split(", ")[0] == "bert"  # the default first


def test_help_examples_compose():
    """Every example in conf/hydra/help/*.yaml is a config the command accepts (placeholders filled)."""
    for command in COMMANDS:
        header = OmegaConf.load(Path(config_dir()) / "hydra" / "help" / f"{command}.yaml").header
        examples = [
            line.split("|")[-1].strip() for line in header.splitlines() if "lmreason " in line and line.startswith("  ")
        ]
        assert 3 <= len(examples) <= 8, command  # a screenful: the common uses, not every option
        for example in examples:
            for placeholder, value in (
                ("<run dir>", "r"),
                ("<model dir>", "m"),
                ("<multirun dir>", "s"),
                ("<baseline run>", "a"),
                ("<run>", "b"),
                ("<multi-task run dir>", "r"),
            ):
                example = example.replace(placeholder, value)
            words = shlex.split(example, comments=True)
            overrides = [w for w in words[2:] if w != "-m"]
            overrides = verbatim_texts(overrides) if command == "infer" else overrides
            compose_cfg(command, [o.split(",")[0] if o.startswith("optimizer.lr=") else o for o in overrides])


@pytest.mark.parametrize("command", ["infer", "finetune"])
def test_command_help_starts_with_examples_and_stays_short(tmp_path, command):
    proc = lmreason(command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.rstrip().splitlines()
    assert (
        lines[0].startswith(f"lmreason {command}: ")
        and lines[2] == "Examples:"
        and lines[3].strip().startswith("lmreason ")
    )
    assert len(lines) < 60 and "schema/" not in proc.stdout and "Powered by Hydra" not in proc.stdout
    assert "# " in proc.stdout.split("== Config ==")[1]  # the keys' comments, not a bare dump
    if command == "infer":
        assert not re.search(r"^(model|task|data):", proc.stdout, re.M)
    picked = lmreason(command, "--help", "generation=sample", cwd=tmp_path).stdout
    assert "generation:  # generation=sample" in picked and "temperature:" in picked
