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
# infer: new questions from a file, as a user would feed them (one syllogism of each kind)
cat > "$RUN_DIR/new_questions.jsonl" <<'JSONL'
{"text": "Consider these statements:\n1. All whales are mammals\n2. All mammals are animals\n\nDoes it logically follow that:\nAll whales are animals?\n(Answer Yes or No)"}
{"text": "Consider these statements:\n1. Some poets are bakers\n2. No bakers are pilots\n\nDoes it logically follow that:\nAll poets are pilots?\n(Answer Yes or No)"}
{"text": "Consider these statements:\n1. No cats are dogs\n2. Some dogs are pets\n\nDoes it logically follow that:\nNo dogs are cats?\n(Answer Yes or No)"}
JSONL
lmreason infer "run=$RUN_DIR" "input=$RUN_DIR/new_questions.jsonl"
# evaluate last: the in-distribution vs OOD table, then robustness (typos, synonyms, renamed terms,
# reordered premises, a distractor, negated conclusions) on both splits
lmreason evaluate "run=$RUN_DIR" 'diagnostics=[robustness]'
echo "== done. Reports: $RUN_DIR/eval/. TensorBoard: tensorboard --logdir outputs"
