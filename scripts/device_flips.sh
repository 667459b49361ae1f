#!/usr/bin/env bash
# The GPU experiment results/adaptive/README.md's moonshot section names as what is left to try: does a robust
# CIFAR-10 model trained longer than the shipped one (5 epochs of PGD-4 on the 2-core CPU) keep fewer clean images
# whose label flips within a small ball? That share decides the robust-margin reject option: under 5% at rho = 2/255
# its 5%-FPR threshold could fall to 0, where the reduction guarantees DARA at 8/255 >= robust accuracy at 6/255.
# It trains a robust model (PGD adversarial training at 8/255, the shipped recipe but EPOCHS epochs, ATTACK_STEPS
# steps, width WIDTH; MODE=trades for TRADES with beta TRADES_BETA, default 6, MODE=weat for WEAT), then runs
# scripts/probe_robust_margin_flips.py --test on it and on the shipped robust model.
#
# Here (once):   mkdir -p .device-data && cp ../shared/data/cifar10-imagefolder.tar.gz .device-data/
#                bash scripts/device_tree.sh hide    # the tracked tree alone is over the 64 MiB a call carries;
#                                                    # `restore` after the calls, before any commit
# There:         TRAIN_SECONDS=420 bash scripts/device_flips.sh   (carry .device-data; one 10-minute call; a cut
#                training run resumes from its last epoch when the script is run again on the same warm machine)
# Anywhere:      SMOKE=1 ROBGEN_DATA=~/.cache/robgen-data bash scripts/device_flips.sh   (2 tiny epochs, 64 images)
#
# Back in $OUT: the probe's output per model (flips-*.txt), the training log, and the model (model.tar.gz, about
# 5 MB at width 32; its paths start with runs/): unpack it in the repository root here (tar xzf model.tar.gz) to
# attack it with `python -m robgen adaptive --detector robust-margin`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
DATA=${ROBGEN_DATA:-$PWD/.device-data}
EPOCHS=${EPOCHS:-30} WIDTH=${WIDTH:-32} ATTACK_STEPS=${ATTACK_STEPS:-7} TRAIN_SECONDS=${TRAIN_SECONDS:-0}
MODE=${MODE:-pgd} TRADES_BETA=${TRADES_BETA:-6}
VAL=2000 TEST=500 EXTRA=()
if [ -n "${SMOKE:-}" ]; then EPOCHS=2 WIDTH=8 ATTACK_STEPS=1 VAL=64 TEST=32 EXTRA=(--train-limit 256 --eval-subset 32); fi
RUN=runs/cifar10-resnet10-w$WIDTH-$MODE-e$EPOCHS${SMOKE:+-smoke}
mkdir -p "$OUT" "$DATA"
if [ ! -d "$DATA/cifar10/train" ]; then tar xzf .device-data/cifar10-imagefolder.tar.gz -C "$DATA"; fi
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 ROBGEN_DATA="$DATA"
resume=()
if [ -e "$RUN/trainer_state.pt" ]; then resume=(--resume); fi
beta=()  # TRADES' weight: trades and weat take it (train refuses a setting its mode would ignore)
if [ "$MODE" = trades ] || [ "$MODE" = weat ]; then beta=(--trades-beta "$TRADES_BETA"); fi
train=($PY -m robgen train --data cifar10 --data-root "$DATA" --arch resnet10_cifar --width "$WIDTH" --mode "$MODE"
       "${beta[@]}" --eps 8/255 --attack-steps "$ATTACK_STEPS" --epochs "$EPOCHS" --lr 0.02
       --batch-size 128 --schedule onecycle --val-size 5000 --out "$RUN" "${resume[@]}" "${EXTRA[@]}")
if [ "$TRAIN_SECONDS" -gt 0 ]; then
    # 124: stopped at its time limit (137: killed after the grace), not a failure: the probes measure what it has
    status=0
    timeout --signal=INT --kill-after=15 "$TRAIN_SECONDS" "${train[@]}" > "$OUT/train.log" 2>&1 || status=$?
    [ "$status" -eq 0 ] || [ "$status" -eq 124 ] || [ "$status" -eq 137 ] || { tail -n 20 "$OUT/train.log"; exit "$status"; }
else
    "${train[@]}" > "$OUT/train.log" 2>&1
fi
tail -n 3 "$OUT/train.log"
for model in "$RUN" cifar10-resnet10-robust; do
    if [ "$model" = "$RUN" ] && [ ! -e "$RUN/config.json" ]; then  # stopped before its first epoch was saved
        echo "$RUN has no epoch yet: its probe is skipped (a longer TRAIN_SECONDS, or run again to resume)"; continue
    fi
    $PY scripts/probe_robust_margin_flips.py --model "$model" --val "$VAL" --test "$TEST" --radii 1/255,2/255,4/255 \
        --device "${DEVICE:-$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}" | tee "$OUT/flips-$(basename "$model").txt"
done
if [ -e "$RUN/config.json" ]; then tar czf "$OUT/model.tar.gz" "$RUN"/config.json "$RUN"/model.safetensors "$RUN"/log.jsonl; fi
ls -la "$OUT"
