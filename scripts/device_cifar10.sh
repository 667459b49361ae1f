#!/usr/bin/env bash
# The GPU work of the CIFAR-10 detection issue, for a session that is lent an accelerator: the official recipe at the
# paper's width 64 and at the shipped width 32, trained side by side on the one GPU, and the detector measured along
# both runs (the ablation's curve: what training length and width are worth).
#
# Here (once):   mkdir -p .device-data && cp ../shared/data/cifar10-imagefolder.tar.gz .device-data/
#                (.device-data/ is git-ignored; name it in the device tool's `carry`)
#                bash scripts/device_tree.sh hide checkpoints results examples   # the tracked tree alone is over
#                                                    # the 64 MiB a call carries, and this reads no checkpoint (a
#                                                    # resumed run's folder travels beside the archive then);
#                                                    # `restore` after the calls, before any commit
# There, in one call (a lease is 15 minutes of device time, a call at most 10):
#                TRAIN_SECONDS=360 MEASURE_SECONDS=140 bash scripts/device_cifar10.sh
#                trains until TRAIN_SECONDS have passed or the 98 epochs are done, then measures every snapshot for at
#                most MEASURE_SECONDS, and packs what it has. With more time: STAGE=train, then STAGE=measure on the
#                same warm machine (runs/ is git-ignored, so it stays there between calls; a train call resumes).
# Anywhere:      SMOKE=1 ROBGEN_DATA=~/.cache/robgen-data bash scripts/device_cifar10.sh   # the whole flow on 512
#                images, 2 epochs, widths 16 and 8 (about 3 minutes on the 2-core CPU)
#
# The official recipe (PAPER.md; the notebooks' optimiser is inferred from their `learning_rate = 0.001` and the
# Imagenette recipe): ResNet10, horizontal flips only, Adam lr 1e-3, weight decay 5e-4, batch 64, MultiStepLR at
# epochs 30 and 80, 98 epochs. The detector (official protocol: PGD-40 8/255, Youden, temperature searched, and the
# paper's FPR) is measured on each run's last epoch, the pixel factor (the 932 exact PNGs against their JPEG q75
# copies) and every 10th epoch's snapshot, on 2,000 validation and 2,000 test images like the CPU rows. Back in $OUT:
# results.tar.gz (ablation rows, evals, logs; unpack it in out/device and merge its rows into
# results/cifar10/ablation/rows/, then `python -m robgen ablation --data cifar10 --out results/cifar10/ablation` redraws the table)
# and each run's last checkpoint (model-wN.tar.gz, split into 15 MB parts: `cat` them), with its trainer state for
# the widths in KEEP_STATE (default 32: its optimiser state is 10 MB, width 64's 40 MB would crowd the lease's 8
# files). A run with its trainer state continues on the next lent machine: unpack it into runs/ here, name
# runs/cifar10-resnet10-wN-official in `carry`, and the train stage resumes it (--resume) where it stopped.
# Measured on the H200: two runs side by side took 6.3-6.8 s an epoch each, whatever their widths (32 beside 64, or
# two of 32), which points at data loading; one run alone with all the workers should be faster (not measured), so
# WIDTHS=32 TRAIN_SECONDS=400 MEASURE_SECONDS=80 in one 10-minute call gives about 59 of the 98 epochs (6.8 s an
# epoch; the evals take up to 60 s more, each limit 15 s of grace, and the unpacking and packing the rest: 450 and 90
# summed to the whole 600 s, and a call cut at its limit brings nothing back).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
DATA=${ROBGEN_DATA:-$PWD/.device-data}
STAGE=${STAGE:-all}
TRAIN_SECONDS=${TRAIN_SECONDS:-0}      # 0: no limit
MEASURE_SECONDS=${MEASURE_SECONDS:-0}  # 0: no limit
# EPOCHS, MILESTONES, AUGMENT (flip | crop-flip) and TAG (a run-name suffix) vary the recipe for an ablation row
EPOCHS=${EPOCHS:-98} MILESTONES=${MILESTONES:-30,80} AUGMENT=${AUGMENT:-flip} TAG=${TAG:-}
KEEP_STATE=${KEEP_STATE:-32}           # widths whose trainer state comes back (to resume on the next machine)
LIMIT=2000 EVERY=10 WORKERS=${WORKERS:-12}
EXTRA=() LIMIT_EVAL=()
if [ -n "${SMOKE:-}" ]; then
    EPOCHS=2 LIMIT=64 EVERY=1 MILESTONES=1 EXTRA=(--train-limit 512 --eval-subset 64) LIMIT_EVAL=(--limit 128)
    WIDTHS=${WIDTHS:-16 8} WORKERS=2
fi
WIDTHS=${WIDTHS:-64 32}
WORK=runs/device-results$TAG
mkdir -p "$OUT" "$DATA" "$WORK"
if [ ! -d "$DATA/cifar10/train" ]; then
    tar xzf .device-data/cifar10-imagefolder.tar.gz -C "$DATA"
fi
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
run_dir() { echo "runs/cifar10-resnet10-w$1-official$TAG"; }

. scripts/device_lib.sh  # limited SECONDS COMMAND...: at most SECONDS (0: no limit), being stopped no failure

# Wait for every background job; say which failed, but go on: what the others made is still worth packing.
wait_all() {
    local pid
    for pid in "$@"; do wait "$pid" || echo "a job failed (exit $?): see the logs in $WORK"; done
}

if [ "$STAGE" = train ] || [ "$STAGE" = all ]; then
    jobs=() per_run=$(( WORKERS / $(wc -w <<< "$WIDTHS") ))
    for width in $WIDTHS; do
        run=$(run_dir "$width") resume=() workers=$per_run
        if [ -e "$run/trainer_state.pt" ]; then  # a resumed run keeps the loader workers it was started with
            resume=(--resume)
            workers=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['training']['config']['workers'])" \
                      "$run/config.json")
        fi
        limited "$TRAIN_SECONDS" $PY -m robgen train --data cifar10 --data-root "$DATA" --arch resnet10_cifar \
            --width "$width" --mode standard --optimizer adam --lr 1e-3 --weight-decay 5e-4 --batch-size 64 \
            --schedule multistep --milestones "$MILESTONES" --augment "$AUGMENT" --epochs "$EPOCHS" \
            --snapshot-every "$EVERY" --eval-steps 2 --workers "$workers" --out "$run" "${resume[@]}" "${EXTRA[@]}" \
            > "$WORK/train-w$width.log" 2>&1 &
        jobs+=($!)
    done
    wait_all "${jobs[@]}"
    for width in $WIDTHS; do echo "w$width: $(wc -l < "$(run_dir "$width")/log.jsonl") epochs"; done
fi

if [ "$STAGE" = measure ] || [ "$STAGE" = all ]; then
    jobs=()
    for width in $WIDTHS; do
        run=$(run_dir "$width")
        if [ ! -e "$run/config.json" ]; then echo "w$width: no checkpoint to measure"; continue; fi
        done_epochs=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['training']['epochs_done'])" \
            "$run/config.json")
        # the rows in order of worth, as a cut-off keeps the first ones: the last epoch, its pixels, the curve
        rows=(--row "official recipe$TAG/w$width, epoch $done_epochs of $EPOCHS=$run"
              --pixels "pixels/w$width official recipe$TAG, epoch $done_epochs=$run")
        for snapshot in "$run"/epochs/epoch-*; do
            [ -e "$snapshot" ] || continue  # no snapshot yet (cut before its 10th epoch, or carried without them)
            epoch=$((10#${snapshot##*-}))
            if [ "$epoch" -ne "$done_epochs" ]; then
                rows+=(--row "official recipe$TAG/w$width, epoch $epoch of $EPOCHS=$snapshot")
            fi
        done
        limited "$MEASURE_SECONDS" $PY -m robgen ablation --data cifar10 --data-root "$DATA" --limit "$LIMIT" \
            "${rows[@]}" --out "$WORK/ablation-w$width" > "$WORK/ablation-w$width.log" 2>&1 &
        jobs+=($!)
    done
    wait_all "${jobs[@]}"
    jobs=()
    for width in $WIDTHS; do
        run=$(run_dir "$width")
        if [ ! -e "$run/config.json" ] || [ "${EVALS:-1}" = 0 ]; then continue; fi
        ( limited 40 $PY -m robgen eval --model "$run" --data cifar10 --data-root "$DATA" --steps 20 \
              "${LIMIT_EVAL[@]}" --record --overwrite --out "$WORK/eval-test-w$width.json" \
          && limited 20 $PY -m robgen eval --model "$run" --data cifar10 --data-root "$DATA" --steps 20 --exact \
              "${LIMIT_EVAL[@]}" --record --overwrite --out "$WORK/eval-test-png-w$width.json" ) > "$WORK/eval-w$width.log" 2>&1 &
        jobs+=($!)
    done
    wait_all "${jobs[@]}"
    for width in $WIDTHS; do
        run=$(run_dir "$width")
        if [ ! -e "$run/config.json" ]; then continue; fi
        cp "$run/log.jsonl" "$WORK/train_log-w$width.jsonl"
        state=(--exclude=trainer_state.pt)
        if [[ " $KEEP_STATE " == *" $width "* ]]; then state=(); fi
        tar czf "$WORK/model-w$width$TAG.tar.gz" "${state[@]}" --exclude=epochs -C runs "$(basename "$run")"
        split -b 15m -d "$WORK/model-w$width$TAG.tar.gz" "$OUT/model-w$width$TAG.tar.gz.part"
        rm "$WORK/model-w$width$TAG.tar.gz"
    done
fi
tar czf "$OUT/results$TAG.tar.gz" -C "$(dirname "$WORK")" "$(basename "$WORK")"
tail -q -n 2 "$WORK"/ablation-w*.log 2>/dev/null || true
ls -la "$OUT"
