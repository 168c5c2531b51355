"""`lmreason export` and backend=onnx|onnx-int8: the graph computes what the PyTorch model computes, infer and
evaluate give the same answers and files through it, and every bad input is one clear line.

In-process (the real config composed, `run(cfg)` called) on a copy of the tiny finished run, so the
exports never touch the session's shared run dir."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read_json, run_cli
from hydra import compose, initialize_config_dir

from lmreason.config import config_dir
from lmreason.errors import UserError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

TEXTS = [
    "the film was really great and long",
    "the film was really awful and short",
    "dull",
    "the film was really wonderful and short, and then some more words to make it the longest input here",
]


def composed(command: str, *overrides: str, tmp_path: Path, cache_dir: Path):
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        return compose(
            config_name=command,
            overrides=["device=cpu", *overrides, f"output_dir={tmp_path / 'out'}", f"cache_dir={cache_dir}"],
        )


def lmreason(command: str, *overrides: str, tmp_path: Path, cache_dir: Path):
    """`lmreason <command>` in this process; returns what run(cfg) returns."""
    import importlib

    module = importlib.import_module(f"lmreason.commands.{command}")
    return module.run(composed(command, *overrides, tmp_path=tmp_path, cache_dir=cache_dir))


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory, finished_run, cache_dir) -> Path:
    """A copy of the tiny run, exported fp32 + int8 (thresholds for a 48-example validation split:
    one flipped label moves accuracy by 2 points)."""
    run = tmp_path_factory.mktemp("onnx") / "run"
    shutil.copytree(finished_run, run)
    lmreason(
        "export",
        f"run={run}",
        "export.quantize=int8",
        "export.int8_max_acc_drop=0.05",
        "export.int8_min_agreement=0.9",
        tmp_path=run.parent,
        cache_dir=cache_dir,
    )
    return run


def printed(capsys) -> str:
    """What was printed, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().out.split())


def fresh_copy(finished_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run, ignore=shutil.ignore_patterns("onnx", "eval"))
    return run


# --------------------------------------------------------------------------- export
def test_export_writes_graphs_whose_logits_equal_torch(exported_run, capsys):
    onnx_dir = exported_run / "checkpoints" / "best" / "onnx"
    assert (onnx_dir / "model.onnx").is_file() and (onnx_dir / "model.int8.onnx").is_file()
    assert not list(onnx_dir.glob(".*tmp*"))  # no temp file left behind
    record = read_json(onnx_dir / "export.json")
    assert record["checked_on"] == "48 examples of the run's validation split"
    assert record["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert record["first_token_only"] is True  # the last layer at [CLS] only; logits still equal the plain model's
    assert record["checks"]["fp32"]["max_abs_logit_diff"] < 1e-4
    assert record["checks"]["fp32"]["label_agreement"] == 1.0
    int8 = record["checks"]["int8"]
    assert int8["label_agreement"] >= 0.9 and int8["acc_onnx"] >= int8["acc_torch"] - 0.05 and int8["acc_torch"] > 0.9


def test_a_plain_onnxruntime_session_and_the_tokenizer_are_enough(exported_run):
    """What the README shows: no lmreason, no torch model; dynamic batch and sequence axes."""
    import onnxruntime as ort
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    checkpoint = exported_run / "checkpoints" / "best"
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    session = ort.InferenceSession(str(checkpoint / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    for texts in (TEXTS, TEXTS[:1], TEXTS[2:3] * 5):  # other batch sizes and lengths than the trace's
        encoded = tokenizer(texts, padding=True, return_tensors="np")
        logits = session.run(["logits"], {i.name: encoded[i.name] for i in session.get_inputs()})[0]
        with torch.inference_mode():
            expected = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
        assert logits.shape == expected.shape
        np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_export_of_a_graph_that_disagrees_leaves_nothing_behind(finished_run, tmp_path, cache_dir, monkeypatch):
    from lmreason.models import onnx_export

    run = fresh_copy(finished_run, tmp_path)
    real = onnx_export._compare
    monkeypatch.setattr(onnx_export, "_compare", lambda *a: {**real(*a), "max_abs_logit_diff": 0.5})
    with pytest.raises(
        UserError, match=r"fp32 graph disagrees .*5\.00e-01 > export.tolerance=0.001.*nothing was written"
    ):
        lmreason("export", f"run={run}", tmp_path=tmp_path, cache_dir=cache_dir)
    onnx_dir = run / "checkpoints" / "best" / "onnx"
    assert not any(onnx_dir.iterdir())


def test_an_int8_graph_that_costs_too_much_accuracy_is_refused_and_fp32_kept(
    finished_run, tmp_path, cache_dir, monkeypatch
):
    from lmreason.models import onnx_export

    run = fresh_copy(finished_run, tmp_path)
    real = onnx_export._compare
    monkeypatch.setattr(
        onnx_export,
        "_compare",
        lambda path, *a: {**real(path, *a), **({"label_agreement": 0.5} if ".int8." in path.name else {})},
    )
    with pytest.raises(
        UserError, match=r"int8 graph is not kept: its labels agree .* on 50.0%.*model.onnx \(fp32\) is kept"
    ):
        lmreason("export", f"run={run}", "export.quantize=int8", tmp_path=tmp_path, cache_dir=cache_dir)
    onnx_dir = run / "checkpoints" / "best" / "onnx"
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["export.json", "model.onnx"]
    assert list(read_json(onnx_dir / "export.json")["checks"]) == ["fp32"]


def test_a_plain_model_dir_is_checked_on_probe_texts(finished_run, tmp_path, cache_dir, capsys):
    """No saved run config (any Hugging Face classifier dir): no data to rebuild, so the check runs on
    built-in probe texts and compares labels and logits only."""
    model_dir = tmp_path / "model"
    shutil.copytree(
        finished_run / "checkpoints" / "best", model_dir, ignore=shutil.ignore_patterns("config.yaml", "onnx")
    )
    record = lmreason("export", f"checkpoint={model_dir}", tmp_path=tmp_path, cache_dir=cache_dir)
    assert "probe texts (no run data" in record["checked_on"] and "probe texts" in printed(capsys)
    assert record["checks"]["fp32"]["max_abs_logit_diff"] < 1e-4 and "acc_torch" not in record["checks"]["fp32"]
    assert (model_dir / "onnx" / "model.onnx").is_file()


# --------------------------------------------------------------------------- infer / evaluate through the graph
def test_infer_backend_onnx_gives_torchs_rows_in_order(exported_run, tmp_path, cache_dir, capsys):
    torch_rows = lmreason("infer", f"run={exported_run}", f"text={TEXTS}", tmp_path=tmp_path, cache_dir=cache_dir)
    onnx_rows = lmreason(
        "infer",
        f"run={exported_run}",
        f"text={TEXTS}",
        "backend=onnx",
        "batch_size=3",
        tmp_path=tmp_path,
        cache_dir=cache_dir,
    )
    assert "backend onnx (CPUExecutionProvider" in printed(capsys)
    assert [r["text"] for r in onnx_rows] == [r["text"] for r in torch_rows] == TEXTS
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    for a, b in zip(torch_rows, onnx_rows):
        assert a.keys() == b.keys()
        assert b["probs"] == pytest.approx(a["probs"], abs=1e-5)
    int8_rows = lmreason(
        "infer", f"run={exported_run}", f"text={TEXTS}", "backend=onnx-int8", tmp_path=tmp_path, cache_dir=cache_dir
    )
    assert sum(a["label"] == b["label"] for a, b in zip(torch_rows, int8_rows)) >= len(TEXTS) - 1


def test_a_backend_exports_on_first_use_and_again_when_the_weights_change(finished_run, tmp_path, cache_dir, capsys):
    run = fresh_copy(finished_run, tmp_path)
    onnx_dir = run / "checkpoints" / "best" / "onnx"
    lmreason("infer", f"run={run}", "text=great", "backend=onnx-int8", tmp_path=tmp_path, cache_dir=cache_dir)
    assert "to ONNX (int8) for backend=onnx-int8" in printed(capsys)
    assert (onnx_dir / "model.onnx").is_file() and (onnx_dir / "model.int8.onnx").is_file()
    lmreason("infer", f"run={run}", "text=great", "backend=onnx", tmp_path=tmp_path, cache_dir=cache_dir)
    assert "to ONNX" not in printed(capsys)  # reused
    weights = run / "checkpoints" / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes())  # new mtime: as if training had written it again
    lmreason("infer", f"run={run}", "text=great", "backend=onnx", tmp_path=tmp_path, cache_dir=cache_dir)
    assert "to ONNX (fp32)" in printed(capsys)
    assert not (onnx_dir / "model.int8.onnx").exists()  # made from the old weights: removed


def test_evaluate_backend_onnx_writes_the_same_files_and_answers(exported_run, tmp_path, cache_dir):
    def files(run):
        return sorted(str(p.relative_to(run / "eval")) for p in (run / "eval").rglob("*") if p.is_file())

    def predicted(run, split):
        return [
            json.loads(line)["predicted"]
            for line in (run / "eval" / split / "predictions.jsonl").read_text().splitlines()
        ]

    torch_run, onnx_run = tmp_path / "torch", tmp_path / "onnx"
    for copy in (torch_run, onnx_run):
        shutil.copytree(exported_run, copy, ignore=shutil.ignore_patterns("eval"))
    torch_results = lmreason("evaluate", f"run={torch_run}", tmp_path=tmp_path, cache_dir=cache_dir)
    onnx_results = lmreason("evaluate", f"run={onnx_run}", "backend=onnx", tmp_path=tmp_path, cache_dir=cache_dir)
    assert files(onnx_run) == files(torch_run) and "test/metrics.json" in files(torch_run)
    for split in ("test", "ood"):
        assert predicted(onnx_run, split) == predicted(torch_run, split)
        assert onnx_results[split]["acc"] == torch_results[split]["acc"]
        assert onnx_results[split]["loss"] == pytest.approx(torch_results[split]["loss"], abs=1e-5)
        assert read_json(onnx_run / "eval" / split / "metrics.json")["backend"] == "onnx"
        assert "backend" not in read_json(torch_run / "eval" / split / "metrics.json")  # backend=torch: as before
    assert onnx_results["gap"].keys() == torch_results["gap"].keys()


def test_evaluate_compares_backends_side_by_side(exported_run, tmp_path, cache_dir, capsys):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("eval"))
    results = lmreason("evaluate", f"run={run}", "backend=[torch,onnx-int8]", tmp_path=tmp_path, cache_dir=cache_dir)
    out = printed(capsys)
    assert "test: backends compared" in out and "onnx-int8" in out
    for split in ("test", "ood"):
        backends = read_json(run / "eval" / split / "metrics.json")["backends"]
        assert list(backends) == ["torch", "onnx-int8"] and backends == results[split]["backends"]
        assert backends["torch"]["acc"] == results[split]["acc"] and backends["torch"]["agreement"] == 1.0
        assert backends["onnx-int8"]["agreement"] >= 0.9
        assert set(backends["onnx-int8"]) == {"acc", "f1_macro", "ece", "loss", "samples_per_s", "agreement"}


# --------------------------------------------------------------------------- bad input: one clear line
@pytest.fixture(params=[("LlamaForCausalLM", "llama"), ("GPT2LMHeadModel", "gpt2")], ids=["llama", "gpt2"])
def gen_model_dir(tmp_path, request) -> Path:
    """A causal LM's model dir (its config is all the refusal needs), named in either style transformers uses."""
    architecture, model_type = request.param
    path = tmp_path / "gpt"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"architectures": [architecture], "model_type": model_type}))
    return path


def test_export_and_onnx_backends_of_a_generation_model_say_cls_only(gen_model_dir, tmp_path, cache_dir):
    with pytest.raises(UserError, match="is a task=gen model; ONNX export supports task=cls"):
        lmreason("export", f"checkpoint={gen_model_dir}", tmp_path=tmp_path, cache_dir=cache_dir)
    with pytest.raises(UserError, match="backend=onnx supports task=cls .* use backend=torch"):
        lmreason(
            "infer", f"checkpoint={gen_model_dir}", "text=hi", "backend=onnx", tmp_path=tmp_path, cache_dir=cache_dir
        )


def test_without_onnxruntime_the_line_gives_the_install_command(exported_run, tmp_path, cache_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(
        UserError, match=r"needs onnxruntime and onnx, which are not installed .*pip install 'lmreason\[onnx\]'"
    ):
        lmreason("export", f"run={exported_run}", tmp_path=tmp_path, cache_dir=cache_dir)
    with pytest.raises(UserError, match=r"backend=onnx needs onnxruntime .*pip install 'lmreason\[onnx\]'"):
        lmreason("infer", f"run={exported_run}", "text=hi", "backend=onnx", tmp_path=tmp_path, cache_dir=cache_dir)


def test_a_damaged_graph_is_one_line_saying_export_again(exported_run, tmp_path, cache_dir):
    run = tmp_path / "run"
    shutil.copytree(exported_run, run, ignore=shutil.ignore_patterns("eval"))
    (run / "checkpoints" / "best" / "onnx" / "model.onnx").write_bytes(b"\x08\x07not a graph")
    with pytest.raises(
        UserError, match=r"model.onnx: cannot load this ONNX graph .*export it again with lmreason export"
    ):
        lmreason("infer", f"run={run}", "text=hi", "backend=onnx", tmp_path=tmp_path, cache_dir=cache_dir)


@pytest.mark.parametrize(
    "command,value,message",
    [
        ("infer", "onnx32", "backend=onnx32: not a backend; choose torch, onnx, onnx-int8"),
        ("infer", "[torch,onnx]", "infer takes one backend"),
        ("evaluate", "[torch,tensorrt]", "backend=tensorrt: not a backend"),
        ("evaluate", "[onnx,onnx]", "give each backend once"),
    ],
)
def test_a_bad_backend_is_refused_before_any_work(command, value, message, tmp_path, cache_dir):
    from lmreason.validation import validate

    cfg = composed(
        command,
        "run=r",
        f"backend={value}",
        *(["text=hi"] if command == "infer" else []),
        tmp_path=tmp_path,
        cache_dir=cache_dir,
    )
    with pytest.raises(UserError, match=message.replace("[", r"\[")):
        validate(command, cfg)


def test_the_cli_refusal_is_one_line(gen_model_dir, tmp_path, cache_dir):
    proc = run_cli("export", f"checkpoint={gen_model_dir}", cache_dir=cache_dir, cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"lmreason export: error: {gen_model_dir} is a task=gen model; ONNX export supports task=cls (classification) "
        "models only; run task=gen models with backend=torch"
    ]
