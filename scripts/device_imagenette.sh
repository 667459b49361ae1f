#!/usr/bin/env bash
# The GPU work of the Imagenette issue, for a session that is lent an accelerator.
#
# The Imagenette archive (118 MB) is larger than one device call may carry (64 MiB), so it travels in
# three parts into the same warm machine (which stays warm only a short while after each call: make the calls
# back to back), and this script puts them together there once the three are in and their SHA-256 matches.
# Here (once):  mkdir -p .device-data && split -b 40m ../shared/data/imagenette2-160.tar.gz \
#                   .device-data/imagenette2-160.tar.gz.part- && (cd ../shared/data && sha256sum \
#                   imagenette2-160.tar.gz) > .device-data/imagenette2-160.tar.gz.sha256   (.device-data/ is ignored)
# Calls 1, 2:   carry .device-data/imagenette2-160.tar.gz.part-aa (then -ab) and .device-data/imagenette2-160.tar.gz.sha256;
#               bash scripts/device_imagenette.sh stage
# Call 3:       carry .device-data/imagenette2-160.tar.gz.part-ac and the .sha256;  bash scripts/device_imagenette.sh stage train
#               (trains each run for TRAIN_SECONDS, default 240, and says how many epochs it has; each `train` call
#               after it on the same warm machine resumes both, ONLY=official or ONLY=w32 one; then `eval`)
# Before:      bash scripts/device_tree.sh hide checkpoints results examples   (training reads no checkpoint; the
#               tracked tree is then under 2 MB, and a part 42 MB); after: bash scripts/device_tree.sh restore
# Anywhere:     SMOKE=1 ROBGEN_DATA=~/.cache/robgen-data bash scripts/device_imagenette.sh train eval   (CPU too)
#
# `train`: the official architecture (3x3 stride-2 stem, width 64, 150-px crops, 60 epochs: the notebook's,
# an extra row) and robgen's width-32 128-px standard model; `eval`: all 3,925 val images, PGD-20 at 4/255.
# Checkpoint folders and eval JSONs come back in $OUT, the folders as one archive in 15 MB parts.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
PARTS=${PARTS:-$HOME/robgen-parts}
DATA=${ROBGEN_DATA:-$HOME/robgen-data}
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-60}
TRAIN_SECONDS=${TRAIN_SECONDS:-240}  # per run and call (0: no limit); two runs and the join fit one 10-minute call
export PYTHONUNBUFFERED=1
. scripts/device_lib.sh  # limited SECONDS COMMAND...: at most SECONDS (0: no limit), being stopped no failure
EXTRA=()
LIMIT=()
RUNS=runs  # a smoke run's folders are its own: never over a real run unpacked here
if [ -n "${SMOKE:-}" ]; then EPOCHS=1; EXTRA=(--train-limit 256 --eval-subset 32 --eval-steps 1); LIMIT=(--limit 64); RUNS=runs/smoke; fi
mkdir -p "$OUT" "$PARTS" "$DATA" "$RUNS"
for step in "$@"; do
  case "$step" in
    stage)
      cp .device-data/imagenette2-160.tar.gz.part-* "$PARTS"/ 2>/dev/null || true
      ls -la "$PARTS"
      cp .device-data/imagenette2-160.tar.gz.sha256 "$PARTS"/ 2>/dev/null || true
      if [ ! -d "$DATA/imagenette2-160/val" ] && [ -f "$PARTS/imagenette2-160.tar.gz.sha256" ]; then
        # joined only when every part is in: the joined archive's SHA-256 is the whole archive's
        want=$(cut -d' ' -f1 "$PARTS/imagenette2-160.tar.gz.sha256")
        have=$(cat "$PARTS"/imagenette2-160.tar.gz.part-* | sha256sum | cut -d' ' -f1)
        if [ "$want" = "$have" ]; then
          cat "$PARTS"/imagenette2-160.tar.gz.part-* | tar xz -C "$DATA"
        else
          echo "not every part is here yet (SHA-256 of the parts so far differs): carry the next part"
        fi
      fi ;;
    train)
      # each run stops after TRAIN_SECONDS (its own, or the call's 10 minutes would cut it with nothing back) and
      # the next `train` call on the same warm machine resumes it from its last epoch; ONLY=official or w32 trains one
      for which in official w32; do
        if [ -n "${ONLY:-}" ] && [ "$ONLY" != "$which" ]; then continue; fi
        if [ "$which" = official ]; then
          run="$RUNS/imagenette-official-w64-standard"
          recipe=(--arch resnet10_imagenette_official --width 64 --image-size 150 --crop-pct 0.9375)
        else
          run="$RUNS/imagenette-w32-standard-gpu" recipe=(--arch resnet10_imagenette --width 32)
        fi
        if [ -e "$run/trainer_state.pt" ]; then resume=(--resume); else resume=(--overwrite); fi
        limited "$TRAIN_SECONDS" $PY -m robgen train --data imagenette --data-root "$DATA" "${recipe[@]}" \
            --epochs "$EPOCHS" --batch-size 128 --lr 0.1 --workers 12 --out "$run" "${resume[@]}" "${EXTRA[@]}" \
            > "$OUT/train-$which.log" 2>&1 || { tail -n 20 "$OUT/train-$which.log"; exit 1; }
        echo "$which: $(wc -l < "$run/log.jsonl" 2>/dev/null || echo 0) of $EPOCHS epochs"; tail -n 2 "$OUT/train-$which.log"
      done ;;
    eval)
      for run in imagenette-official-w64-standard imagenette-w32-standard-gpu; do
        $PY -m robgen eval --model "$RUNS/$run" --data imagenette --data-root "$DATA" --eps 4/255 --steps 20 \
            "${LIMIT[@]}" --record --overwrite --out "$OUT/eval-$run.json"
      done
      # in 15 MB parts: a file back from $OUT is at most 16 MiB (join here: cat imagenette-runs.tar.gz.part-* | tar xz -C runs)
      tar czf - --exclude=trainer_state.pt -C "$RUNS" imagenette-official-w64-standard imagenette-w32-standard-gpu \
          | split -b 15m -d - "$OUT/imagenette-runs.tar.gz.part-" ;;
    *) echo "unknown step $step: use stage, train, eval" >&2; exit 2 ;;
  esac
done
ls -la "$OUT"
