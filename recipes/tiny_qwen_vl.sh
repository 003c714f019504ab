#!/usr/bin/env bash
# qwenvl-tiny-qwen-vl: the stage TOML files on the tiny Qwen-VL (v1) architecture (recipes/arch/qwenvl_tiny.json:
# 6-block ViT, a 64-query cross-attention resampler with 2D sin-cos positions, a 4-layer Qwen decoder; 8.6M
# params), by the design the learnability ladder chose (bench/RESULTS.md), in four stages:
#   stage0_text (decoder on the chat text) -> stage1_vision (vision pre-training on the generator's dense
#   targets, train/dense.py; each resampler query answers for its cells of the 8x8 query grid) ->
#   stage2_multitask (everything, answers + dense targets) -> stage3_sft (ViT frozen).
# Only what differs from the TOML files is overridden here: data at 140 px with v1's per-mille <box> answers
# (no video: v1 has none), the 4,096 tiktoken ranks, the aux losses and the wall-clock budgets. Stage 1 runs
# at the tower's 112 px; stage 2 resizes the ViT position table to 140 px (the TOML's stage.image_size).
# Usage: bash recipes/tiny_qwen_vl.sh [OUT=runs/tinyv1] [MINUTES="4 12 44 8"]   (re-run to resume; env DATA=data
#        RANKS=qwenvl/assets/qwenvl-tiny-qwen-vl/qwen.tiktoken LIMIT=100)
set -euo pipefail
OUT=${1:-runs/tinyv1}
read -r M0 M1 M2 M3 <<< "${2:-4 12 44 8}"
D=${DATA:-data}
[ -f $D/synthv1/manifest.json ] || python -m qwenvl synth $D/synthv1 --n vqa=16000,count=16000,grounding=12000,ocr=20000,caption=4000,grounded_caption=3000 \
  --seed 4 --splits 0.9,0.05,0.05 --image-size 140 --family qwen_vl --no-progress
[ -f $D/synthv1_easy/manifest.json ] || python -m qwenvl synth $D/synthv1_easy --n vqa=6000,count=8000,ocr=10000,caption=2000,grounding=4000 \
  --seed 5 --splits 0.9,0.05,0.05 --image-size 140 --family qwen_vl --difficulty easy --no-progress
RANKS=${RANKS:-qwenvl/assets/qwenvl-tiny-qwen-vl/qwen.tiktoken}
[ -f $OUT/tokenizer/qwen.tiktoken ] || { mkdir -p $OUT/tokenizer && cp "$RANKS" $OUT/tokenizer/qwen.tiktoken; }

run() {  # stage, then --set overrides
  local s=$1; shift
  [ -d $OUT/$s/final ] && return 0
  local r=""; [ -d $OUT/$s/checkpoints ] && r=--resume
  # shellcheck disable=SC2086  # EXTRA: more --set overrides, e.g. EXTRA="--set schedule.max_steps=2" (smoke)
  python -m qwenvl train recipes/$s.toml $r --set run.output_dir=$OUT/$s "$@" ${EXTRA:-}
}
medium=(--set "data.train=[\"$D/synthv1/train.jsonl\"]" --set "data.val=[\"$D/synthv1/val.jsonl\"]")
run stage0_text --set data.tokenizer=$OUT/tokenizer "${medium[@]}" --set schedule.max_minutes=$M0 --set run.precision=auto
run stage1_vision --set model.init=$OUT/stage0_text/final --set "data.train=[\"$D/synthv1_easy/train.jsonl\",\"$D/synthv1/train.jsonl\"]" \
  --set "data.val=[\"$D/synthv1/val.jsonl\"]" --set data.image_size=112 --set schedule.max_minutes=$M1
run stage2_multitask --set model.init=$OUT/stage1_vision/final "${medium[@]}" --set data.tasks.document=0 \
  --set data.tasks.chart=0 --set data.tasks.compare=0 --set data.tasks.dialogue=0 --set schedule.max_minutes=$M2 \
  --set aux.dense=1.0 --set aux.dense_sub=2 --set run.precision=auto
run stage3_sft --set model.init=$OUT/stage2_multitask/final "${medium[@]}" \
  --set data.tasks.dialogue=0 --set data.tasks.compare=0 --set schedule.max_minutes=$M3 \
  --set aux.dense=0.5 --set aux.dense_sub=2 --set run.precision=auto
for s in stage0_text stage1_vision stage2_multitask stage3_sft; do  # the stage table: what each stage adds
  [ -f $OUT/eval/$s.json ] || python -m qwenvl eval $OUT/$s/final $D/synthv1/test.jsonl --limit ${LIMIT:-100} --out $OUT/eval/$s.json
done
