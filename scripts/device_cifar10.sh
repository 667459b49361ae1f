#!/usr/bin/env bash
# The GPU work of the CIFAR-10 fidelity issue in one command, for a session that is lent an accelerator.
#
# Here (once):   mkdir -p .device-data && cp ../shared/data/cifar10-imagefolder.tar.gz .device-data/
#                (.device-data/ is git-ignored; name it in the device tool's `carry`)
# There:         bash scripts/device_cifar10.sh            # the full run (minutes on an H100)
# Anywhere:      SMOKE=1 bash scripts/device_cifar10.sh    # the whole flow on 512 images, 1 epoch (CPU too)
#
# Trains the paper-width (64) standard ResNet10, evaluates it on all 10,000 test images and on the 932
# exact PNG ones, and leaves the checkpoint folder and the eval JSONs as one archive in $OUT (the device
# tool brings $OUT back). The device image has torch, timm and safetensors; torchattacks is only needed
# for APGD and the zoo, which this script does not run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
DATA=${ROBGEN_DATA:-$PWD/.device-data}
NAME=cifar10-resnet10-w64-standard
EPOCHS=${EPOCHS:-40}
EXTRA=()
if [ -n "${SMOKE:-}" ]; then EPOCHS=1; EXTRA=(--train-limit 512 --eval-subset 64); fi
mkdir -p "$OUT" "$DATA"
if [ ! -d "$DATA/cifar10/train" ]; then
    tar xzf .device-data/cifar10-imagefolder.tar.gz -C "$DATA"
fi
PY=${PYTHON:-python3}
RUN="runs/$NAME"
$PY -m robgen train --data cifar10 --data-root "$DATA" --arch resnet10_cifar --width 64 --mode standard \
    --epochs "$EPOCHS" --batch-size 256 --lr 0.2 --workers 8 --out "$RUN" --overwrite "${EXTRA[@]}" 2>&1 | tail -n 5
LIMIT=()
if [ -n "${SMOKE:-}" ]; then LIMIT=(--limit 128); fi
$PY -m robgen eval --model "$RUN" --data cifar10 --data-root "$DATA" --steps 20 "${LIMIT[@]}" --record \
    --out "$OUT/eval-test.json"
$PY -m robgen eval --model "$RUN" --data cifar10 --data-root "$DATA" --steps 20 --exact "${LIMIT[@]}" --record \
    --out "$OUT/eval-test-png.json"
tar czf "$OUT/$NAME.tar.gz" --exclude=trainer_state.pt -C runs "$NAME"
ls -la "$OUT"
