#!/usr/bin/env bash
# Ship a finished training run as checkpoints/NAME, with everything the library and the app read:
# the weights, config.json and log.jsonl (not the trainer state), the accuracies measured by
# `robgen eval --record` on the whole test split (CIFAR-10: also the 932 exact PNG images; Imagenette:
# also the first 500 val images, clean), the Detect
# tab's detector.json and the synthesis seeds.
#
#   bash scripts/ship_checkpoint.sh RUN_FOLDER NAME DATA [NORM EPS]
#   e.g. bash scripts/ship_checkpoint.sh runs/imagenette-w32-robust-linf4/best imagenette-resnet10-robust imagenette linf 4/255
#
# NORM EPS: the PGD-20 budget of the recorded evaluation (default: the training budget of an adversarial
# run; else L-inf 8/255 on CIFAR, 4/255 on Imagenette).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=$1; NAME=$2; DATA=$3
PY=${PYTHON:-python}
read -r MODE TNORM TEPS < <($PY -c "import json,sys; c=json.load(open('$RUN/config.json'))['training']['config']; print(c['mode'], c['norm'], c['eps'])")
if [ $# -ge 5 ]; then NORM=$4; EPS=$5
elif [ "$MODE" != standard ]; then NORM=$TNORM; EPS=$TEPS
elif [ "$DATA" = imagenette ]; then NORM=linf; EPS=4/255
else NORM=linf; EPS=8/255; fi
DEST=checkpoints/$NAME
mkdir -p "$DEST"
cp "$RUN/model.safetensors" "$RUN/config.json" "$DEST/"
cp "$RUN/log.jsonl" "$DEST/" 2>/dev/null || cp "$RUN/../log.jsonl" "$DEST/"  # best/ keeps its run's log one up
# A standard model falls to PGD at once (0.0% on CIFAR-10's 932 exact images): its full split gets the clean
# accuracy only (--steps 0), which costs one forward pass per image instead of 21.
FULL_STEPS=20; [ "$MODE" = standard ] && FULL_STEPS=0
$PY -m robgen eval --model "$DEST" --data "$DATA" --norm "$NORM" --eps "$EPS" --steps "$FULL_STEPS" --record
if [ "$DATA" = cifar10 ]; then
  $PY -m robgen eval --model "$DEST" --data "$DATA" --norm "$NORM" --eps "$EPS" --steps 20 --exact --record
else  # the fixed subset tests/test_shipped_checkpoints.py checks the checkpoint against
  $PY -m robgen eval --model "$DEST" --data "$DATA" --limit 500 --steps 0 --record
fi
$PY -m robgen fit-detector --model "$DEST" --data "$DATA" --overwrite
RESOLUTION=8; [ "$DATA" = imagenette ] && RESOLUTION=16
$PY -m robgen fit-seeds --model "$DEST" --data "$DATA" --resolution "$RESOLUTION" --overwrite
ls -la "$DEST"
