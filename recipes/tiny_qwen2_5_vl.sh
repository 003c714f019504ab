#!/usr/bin/env bash
# The qwenvl-tiny recipes (stage 0-3 TOML files, unchanged) run on a tiny Qwen2.5-VL-architecture config:
# 2D-RoPE windowed ViT (6 blocks, full attention in 2 and 5), 2x2 patch merger, M-RoPE decoder, 8.9M params.
# Only what differs between the generations is overridden: the architecture, the tokenizer folder (the same
# 4,096 BPE ranks as a tokenizer.json with the Qwen2-VL special tokens), data with Qwen2.5-VL boxes
# (absolute pixels of the resized input) and video clips, a pixel budget instead of stage.image_size, and
# shorter wall-clock budgets.
# Usage: bash recipes/tiny_qwen2_5_vl.sh [OUT=runs/tiny25] [MINUTES="2 4 7 2"]   (re-run to resume; env DATA=data RANKS=runs/tiny/tokenizer/qwen.tiktoken)
# Needs: runs/tiny/tokenizer/qwen.tiktoken (README: retrain qwenvl-tiny), 4,096 ranks: the arch's special-token
#        ids are 4096 + their index (<|image_pad|> = 4108).
set -euo pipefail
OUT=${1:-runs/tiny25}
read -r M0 M1 M2 M3 <<< "${2:-2 4 7 2}"
D=${DATA:-data}
[ -f $D/synth25/manifest.json ] || python -m qwenvl synth $D/synth25 --n vqa=4000,count=4000,grounding=4000,ocr=6000,caption=1500,grounded_caption=1000,video=3000 \
  --seed 2 --splits 0.9,0.05,0.05 --image-size 140 --family qwen2_5_vl --no-progress
[ -f $D/synth25_easy/manifest.json ] || python -m qwenvl synth $D/synth25_easy --n vqa=2000,count=3000,ocr=4000,caption=1000,video=1500 \
  --seed 3 --splits 0.9,0.05,0.05 --image-size 140 --family qwen2_5_vl --difficulty easy --no-progress
RANKS=${RANKS:-runs/tiny/tokenizer/qwen.tiktoken}
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
  "${medium[@]}" --set schedule.max_minutes=$M0
# stage 1: low resolution (112x112 budget); boxes are pixels of the 140 px input, so grounding waits for stage 2
run stage1_pretrain --set model.init=$OUT/stage0_text/final --set "data.train=[\"$D/synth25_easy/train.jsonl\"]" \
  --set "data.val=[\"$D/synth25_easy/val.jsonl\"]" --set data.tasks.grounding=0 --set data.tasks.grounded_caption=0 \
  --set data.tasks.video=0.15 --set data.max_pixels=12544 --set schedule.max_minutes=$M1
run stage2_multitask --set model.init=$OUT/stage1_pretrain/final "${medium[@]}" --set stage.image_size=0 \
  --set stage.resize_pos_embed=false --set data.max_pixels=19600 --set data.tasks.video=0.12 --set data.tasks.document=0 \
  --set data.tasks.chart=0 --set data.tasks.compare=0 --set data.tasks.dialogue=0 --set schedule.max_minutes=$M2
run stage3_sft --set model.init=$OUT/stage2_multitask/final "${medium[@]}" --set data.max_pixels=19600 \
  --set data.tasks.video=0.15 --set data.tasks.dialogue=0 --set data.tasks.compare=0 --set schedule.max_minutes=$M3
[ -f $OUT/eval/stage3_sft.json ] || python -m qwenvl eval $OUT/stage3_sft/final $D/synth25/test.jsonl --limit ${LIMIT:-100} --out $OUT/eval/stage3_sft.json
