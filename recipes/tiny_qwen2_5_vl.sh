#!/usr/bin/env bash
# qwenvl-tiny (the default model): the stage TOML files on a tiny Qwen2.5-VL-architecture config (2D-RoPE windowed ViT,
# 6 blocks, full attention in 2 and 5; 2x2 patch merger; M-RoPE decoder; 8.9M params), in four stages:
#   stage0_text (decoder on the chat text) -> stage1_vision (vision pre-training on the generator's dense
#   targets, train/dense.py) -> stage2_multitask (everything, answers + dense targets) -> stage3_sft (ViT frozen).
# Only what differs from the TOML files is overridden here: the architecture, the tokenizer folder (the 4,096
# BPE ranks as a tokenizer.json with the Qwen2-VL special tokens), data with Qwen2.5-VL boxes (absolute pixels
# of the resized input) and video clips, a pixel budget instead of stage.image_size, the dense targets kept in
# stages 2-3 (aux.dense; the ladder in bench/RESULTS.md) and the wall-clock budgets.
# Usage: bash recipes/tiny_qwen2_5_vl.sh [OUT=runs/tiny25] [MINUTES="4 12 48 8"]   (re-run to resume; env DATA=data
#        RANKS=qwenvl/assets/qwenvl-tiny-qwen-vl/qwen.tiktoken LIMIT=100)
# Needs: 4,096 BPE ranks (RANKS): the arch's special-token ids are 4096 + their index (<|image_pad|> = 4108).
set -euo pipefail
OUT=${1:-runs/tiny25}
read -r M0 M1 M2 M3 <<< "${2:-4 12 48 8}"
D=${DATA:-data}
[ -f $D/synth25/manifest.json ] || python -m qwenvl synth $D/synth25 --n vqa=16000,count=16000,grounding=12000,ocr=20000,caption=4000,grounded_caption=3000,video=4000 \
  --seed 2 --splits 0.9,0.05,0.05 --image-size 140 --family qwen2_5_vl --no-progress
[ -f $D/synth25_easy/manifest.json ] || python -m qwenvl synth $D/synth25_easy --n vqa=6000,count=8000,ocr=10000,caption=2000,grounding=4000,video=1500 \
  --seed 3 --splits 0.9,0.05,0.05 --image-size 140 --family qwen2_5_vl --difficulty easy --no-progress
RANKS=${RANKS:-qwenvl/assets/qwenvl-tiny-qwen-vl/qwen.tiktoken}
[ -f $OUT/tokenizer/tokenizer.json ] || python -c "from qwenvl.train.tokenizer_export import write_qwen2_tokenizer as w; w('$RANKS', '$OUT/tokenizer', max_pixels=140*140)"

run() {  # stage, then --set overrides
  local s=$1; shift
  [ -d $OUT/$s/final ] && return 0
  local r=""; [ -d $OUT/$s/checkpoints ] && r=--resume
  # shellcheck disable=SC2086  # EXTRA: more --set overrides, e.g. EXTRA="--set schedule.max_steps=2" (smoke)
  python -m qwenvl train recipes/$s.toml $r --set run.output_dir=$OUT/$s "$@" ${EXTRA:-}
}
medium=(--set "data.train=[\"$D/synth25/train.jsonl\"]" --set "data.val=[\"$D/synth25/val.jsonl\"]")
run stage0_text --set model.config=recipes/arch/qwen2_5_vl_tiny.json --set data.tokenizer=$OUT/tokenizer \
  "${medium[@]}" --set schedule.max_minutes=$M0 --set run.precision=auto
# stage 1: the ViT and merger learn the dense targets at the full 140x140 budget (no answers, so the box format
# does not matter yet); easy and medium scenes in one mixture
run stage1_vision --set model.init=$OUT/stage0_text/final --set "data.train=[\"$D/synth25_easy/train.jsonl\",\"$D/synth25/train.jsonl\"]" \
  --set "data.val=[\"$D/synth25/val.jsonl\"]" --set data.max_pixels=19600 --set schedule.max_minutes=$M1
run stage2_multitask --set model.init=$OUT/stage1_vision/final "${medium[@]}" --set stage.image_size=0 \
  --set stage.resize_pos_embed=false --set data.max_pixels=19600 --set data.tasks.video=0.12 --set data.tasks.document=0 \
  --set data.tasks.chart=0 --set data.tasks.compare=0 --set data.tasks.dialogue=0 --set schedule.max_minutes=$M2 \
  --set aux.dense=1.0 --set aux.dense_sub=2 --set run.precision=auto
run stage3_sft --set model.init=$OUT/stage2_multitask/final "${medium[@]}" --set data.max_pixels=19600 \
  --set data.tasks.video=0.15 --set data.tasks.dialogue=0 --set data.tasks.compare=0 --set schedule.max_minutes=$M3 \
  --set aux.dense=0.5 --set aux.dense_sub=2 --set run.precision=auto
for s in stage0_text stage1_vision stage2_multitask stage3_sft; do  # the stage table: what each stage adds
  [ -f $OUT/eval/$s.json ] || python -m qwenvl eval $OUT/$s/final $D/synth25/test.jsonl --limit ${LIMIT:-100} --out $OUT/eval/$s.json
done
