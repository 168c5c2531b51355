#!/usr/bin/env bash
# The built-in demo: prepare -> finetune -> evaluate -> infer on the default config
# (model=bert, the packaged pretrained MiniLM encoder, on a reasoning-gym task with an
# out-of-distribution test split). Ends with the in-distribution vs OOD table.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR="outputs/demo/$(date +%Y-%m-%d_%H-%M-%S)"
echo "== lmreason demo: run dir $RUN_DIR"
lmreason prepare
lmreason finetune "hydra.run.dir=$RUN_DIR"
lmreason evaluate "run=$RUN_DIR"
# infer: the first OOD questions, as a user would feed a file of new inputs
head -n 5 "$RUN_DIR/eval/ood/predictions.jsonl" > "$RUN_DIR/new_questions.jsonl"
lmreason infer "run=$RUN_DIR" "input=$RUN_DIR/new_questions.jsonl"
echo "== done. TensorBoard: tensorboard --logdir outputs"
