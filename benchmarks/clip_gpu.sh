#!/usr/bin/env bash
# A real architecture through the whole CLIP story on one GPU (docs/results/performance.md, "On a GPU"): pre-train
# open_clip's ViT-B-32 at 224 px from scratch on `shapes`, poison fine-tuning data with Blended and
# BadNet-stripes, fine-tune one poisoned model per attack, then clean each with finetune,
# CleanCLIP, PAR and PAR on synthetic pairs at several learning rates (benchmarks/clip_frontier.py).
# Every step is the public CLI; each step's wall time goes to OUT/times.tsv, each eval to
# OUT/evals.jsonl, each frontier to OUT/frontier-ATTACK/ (CSV + PNG).
#
# Usage: bash benchmarks/clip_gpu.sh OUT
# Knobs (environment): PL (the poisonlab command), MODEL, PRE_N, PRE_EPOCHS, PRE_LR, BATCH,
# POISON_N, POISON_EPOCHS, POISON_LR, CLEAN_N, CLEAN_EPOCHS, CLEAN_LRS, TEST_N, ATTACKS.
# A CPU dry run of the commands: PRE_N=64 PRE_EPOCHS=1 BATCH=32 POISON_N=64 POISON_EPOCHS=1
#   CLEAN_N=64 CLEAN_EPOCHS=1 CLEAN_LRS=1e-4 TEST_N=40 bash benchmarks/clip_gpu.sh /tmp/vit-dry
set -euo pipefail

OUT=${1:?usage: bash benchmarks/clip_gpu.sh OUT}
PL=${PL:-poisonlab}
PY=${PY:-python3}
MODEL=${MODEL:-ViT-B-32}
PRE_N=${PRE_N:-10000} PRE_EPOCHS=${PRE_EPOCHS:-30} PRE_LR=${PRE_LR:-5e-4} BATCH=${BATCH:-256}
POISON_N=${POISON_N:-4000} POISON_EPOCHS=${POISON_EPOCHS:-6} POISON_LR=${POISON_LR:-1e-4}
CLEAN_N=${CLEAN_N:-2500} CLEAN_EPOCHS=${CLEAN_EPOCHS:-12} CLEAN_LRS=${CLEAN_LRS:-"1e-4 3e-4"}
TEST_N=${TEST_N:-1000}
# name:trigger:rate[:trigger-param]; the patch is one 32-px ViT patch wide, as in the PAR spec's 16/224.
ATTACKS=${ATTACKS:-"blended:blended:0.1 badnet-stripes:badnet-stripes:0.15:size=32"}
TARGET=star
mkdir -p "$OUT"
printf 'step\tseconds\n' > "$OUT/times.tsv"

step() {  # step NAME COMMAND...: run it, log its wall time
    local name=$1 start=$SECONDS
    shift
    echo "== $name: $*" >&2
    "$@"
    printf '%s\t%s\n' "$name" "$((SECONDS - start))" >> "$OUT/times.tsv"
}

evaluate() {  # evaluate NAME CKPT [TRIGGER PARAM...]: one JSON line in evals.jsonl
    local name=$1 ckpt=$2
    shift 2
    local args=(--model "$ckpt" --dataset shapes --n "$TEST_N" --json)
    [ $# -gt 0 ] && args+=(--trigger "$1" --target "$TARGET") && shift
    for p in "$@"; do args+=(--trigger-param "$p"); done
    echo "{\"model\": \"$name\", \"eval\": $($PL eval "${args[@]}")}" >> "$OUT/evals.jsonl"
}

W="$OUT/work"
step pretrain $PL train clip --model "$MODEL" --dataset shapes --n "$PRE_N" --epochs "$PRE_EPOCHS" \
    --batch-size "$BATCH" --lr "$PRE_LR" --warmup 100 --out "$W/clean"
step eval-clean evaluate clean "$W/clean/model.safetensors"

for spec in $ATTACKS; do
    IFS=: read -r name trigger rate param <<< "$spec"
    tp=()
    [ -n "${param:-}" ] && tp=(--trigger-param "$param")
    step "poison-$name" $PL poison --dataset shapes --n "$POISON_N" --data-seed 1 --attack clip-dirty \
        --target "$TARGET" --rate "$rate" --trigger "$trigger" "${tp[@]}" --image-size 224 --out "$W/plan-$name"
    step "finetune-$name" $PL train clip --dataset "$W/plan-$name/plan.json" --pretrained "$W/clean/model.safetensors" \
        --epochs "$POISON_EPOCHS" --batch-size "$BATCH" --lr "$POISON_LR" --warmup 20 --out "$W/poisoned-$name"
    step "eval-$name" evaluate "poisoned-$name" "$W/poisoned-$name/model.safetensors" "$trigger" ${param:+"$param"}
    # shellcheck disable=SC2086  # CLEAN_LRS is a list
    step "clean-$name" $PY benchmarks/clip_frontier.py --model "$W/poisoned-$name/model.safetensors" \
        --trigger "$trigger" "${tp[@]}" --target "$TARGET" --lrs $CLEAN_LRS --epochs "$CLEAN_EPOCHS" \
        --n "$CLEAN_N" --test-n "$TEST_N" --set finetune:schedule=two-phase --set cleanclip:batch_size=128 --out "$OUT/frontier-$name"
done
echo "done: $OUT" >&2
