#!/usr/bin/env bash
# The GPU work of the Imagenette issue, for a session that is lent an accelerator.
#
# The Imagenette archive (118 MB) is larger than one device call may carry (64 MiB), so it travels in
# two parts into the same warm machine, and this script puts them together there.
# Here (once):  mkdir -p .device-data && split -b 60m ../shared/data/imagenette2-160.tar.gz \
#                   .device-data/imagenette2-160.tar.gz.part-      (.device-data/ is git-ignored)
# Call 1:       carry .device-data/imagenette2-160.tar.gz.part-aa;  bash scripts/device_imagenette.sh stage
# Call 2:       carry .device-data/imagenette2-160.tar.gz.part-ab;  bash scripts/device_imagenette.sh stage train
#               (trains; calls after it on the same warm machine can run `eval` alone)
# Before:      bash scripts/device_tree.sh hide results/synthesis results/adaptive examples checkpoints/cifar10-*
#               (the tracked tree alone is over the 64 MiB a call carries); after: bash scripts/device_tree.sh restore
# Anywhere:     SMOKE=1 ROBGEN_DATA=~/.cache/robgen-data bash scripts/device_imagenette.sh train eval   (CPU too)
#
# `train`: the official architecture (3x3 stride-2 stem, width 64, 150-px crops, 60 epochs: the notebook's,
# an extra row) and robgen's width-32 128-px standard model; `eval`: all 3,925 val images, PGD-20 at 4/255.
# Checkpoint folders and eval JSONs come back as one archive in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
PARTS=${PARTS:-$HOME/robgen-parts}
DATA=${ROBGEN_DATA:-$HOME/robgen-data}
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-60}
EXTRA=()
LIMIT=()
if [ -n "${SMOKE:-}" ]; then EPOCHS=1; EXTRA=(--train-limit 256 --eval-subset 32 --eval-steps 1); LIMIT=(--limit 64); fi
mkdir -p "$OUT" "$PARTS" "$DATA"
for step in "$@"; do
  case "$step" in
    stage)
      cp .device-data/imagenette2-160.tar.gz.part-* "$PARTS"/ 2>/dev/null || true
      ls -la "$PARTS"
      if [ ! -d "$DATA/imagenette2-160/val" ] && [ -f "$PARTS/imagenette2-160.tar.gz.part-ab" ]; then
        cat "$PARTS"/imagenette2-160.tar.gz.part-* | tar xz -C "$DATA"
      fi ;;
    train)
      $PY -m robgen train --data imagenette --data-root "$DATA" --arch resnet10_imagenette_official --width 64 \
          --image-size 150 --crop-pct 0.9375 --epochs "$EPOCHS" --batch-size 128 --lr 0.1 --workers 12 \
          --out runs/imagenette-official-w64-standard --overwrite "${EXTRA[@]}" 2>&1 | tail -n 3
      $PY -m robgen train --data imagenette --data-root "$DATA" --arch resnet10_imagenette --width 32 \
          --epochs "$EPOCHS" --batch-size 128 --lr 0.1 --workers 12 \
          --out runs/imagenette-w32-standard-gpu --overwrite "${EXTRA[@]}" 2>&1 | tail -n 3 ;;
    eval)
      for run in imagenette-official-w64-standard imagenette-w32-standard-gpu; do
        $PY -m robgen eval --model "runs/$run" --data imagenette --data-root "$DATA" --eps 4/255 --steps 20 \
            "${LIMIT[@]}" --record --overwrite --out "$OUT/eval-$run.json"
      done
      tar czf "$OUT/imagenette-runs.tar.gz" --exclude=trainer_state.pt -C runs \
          imagenette-official-w64-standard imagenette-w32-standard-gpu ;;
    *) echo "unknown step $step: use stage, train, eval" >&2; exit 2 ;;
  esac
done
ls -la "$OUT"
