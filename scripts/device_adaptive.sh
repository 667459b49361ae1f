#!/usr/bin/env bash
# The GPU work of the adaptive-evaluation issue, for a session that is lent an accelerator: the committed adaptive
# runs (every detector, 500 test images, 100 steps, 3 restarts, a range of eps for the DARA-against-eps figure).
#
# Here (once):   mkdir -p .device-data && cp ../shared/data/cifar10-imagefolder.tar.gz .device-data/
#                (.device-data/ is git-ignored; name it in the device tool's `carry`)
#                bash scripts/device_tree.sh hide    # the tracked tree alone is over the 64 MiB a call carries (for
#                Imagenette models: hide results/synthesis results/adaptive examples checkpoints/cifar10-*);
#                `bash scripts/device_tree.sh restore` after the calls, before any commit
# There:         bash scripts/device_adaptive.sh [MODEL ...]     # default: the three CIFAR-10 models, in order
#                Each model's run keeps its finished stages in runs/adaptive/<model><TAG>-<settings>/.stages on the warm machine,
#                so a call cut at the 10-minute limit continues where it stopped when made again at once.
# The moonshot's reject option (robust-margin: 5 passes a score) on the robust model, in its own folder:
#                DETECTORS=robust-margin EPS=8/255 TAG=-robust-margin bash scripts/device_adaptive.sh cifar10-resnet10-robust
#                and with its budget counted among the correctly classified validation images (Chen et al. 2023;
#                results/adaptive/README.md, avenue 8), FPR_AMONG=correct added to the same line (and TAG=-rm-correct)
# Imagenette's robust model (every detector; on the CPU only the energy detector's run was affordable): first the
#                three `stage` calls of scripts/device_imagenette.sh (they put the archive together in ~/robgen-data),
#                with  bash scripts/device_tree.sh hide checkpoints/cifar10-* checkpoints/imagenette-resnet10-standard*
#                checkpoints/imagenette-resnet10-quasirobust results examples  (so that the model's checkpoint travels
#                beside a 42 MB part), then  DATA=imagenette ROBGEN_DATA=$HOME/robgen-data EPS=4/255,64/255 BATCH=250 \
#                      bash scripts/device_adaptive.sh imagenette-resnet10-robust
#                and robust-margin on it (the moonshot's other robust model; at most 8.0 M forward+backward passes,
#                about 12 hours of the 2-core CPU: its CPU run lost its kept stages with session 53's checkout, so it
#                is this script's to make): after the same preparation,
#                      DATA=imagenette ROBGEN_DATA=$HOME/robgen-data DETECTORS=robust-margin RADIUS=1/255 EPS=4/255 \
#                      BATCH=250 TAG=-robust-margin bash scripts/device_adaptive.sh imagenette-resnet10-robust
#                (RADIUS: robust-margin's ball, 1/255 a quarter of its eps as the default 2/255 is of CIFAR-10's 8/255),
#                and the same line with FPR_AMONG=correct TAG=-rm-correct (avenue 8's count, as on CIFAR-10)
# Like for like: the committed CIFAR-10 runs used batches of 100, eps 8/255 (and 64/255) and --skip-evaded (the
#                default here; SKIP_EVADED=0 runs every attack on every image): a rerun meant to match one image by
#                image passes EPS=8/255,64/255 BATCH=100 (other values draw other random starts), and the code of the
#                run's commit (each results.json's stage key records it).
# Anywhere:      SMOKE=1 ROBGEN_DATA=~/.cache/robgen-data bash scripts/device_adaptive.sh cifar10-resnet10-standard
#                (the whole flow on 32 images, 5 steps, 1 restart: a minute or two on the CPU)
#
# Estimated cost (python -m robgen adaptive --estimate-only): per CIFAR-10 model and eps, about 8.6 million
# forward+backward image-passes at most (7 suites: 6 detectors and the detector off), 25.9 million for the default
# three eps: name one model per call. $OUT gets, per model, adaptive-<model>.tar.gz: what `python -m robgen
# adaptive` writes (results.json, results.md, adaptive_dara.png, detectors/), without its stages; unpack each into
# results/adaptive/<model>/ here. The stages stay on the machine only while it is warm (a short while after each
# call): a call cut at its limit continues only if the next call follows at once. Imagenette models (DATA=imagenette) need the
# Imagenette archive: see scripts/device_imagenette.sh for how it travels.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
DATA_ROOT=${ROBGEN_DATA:-$PWD/.device-data}
DATA=${DATA:-cifar10}
EPS=${EPS:-4/255,8/255,64/255}  # 64/255: the "near 0 at a large eps" sanity check
DETECTORS=${DETECTORS:-energy,band,class-energy,multi-t,mahalanobis,energy-gap}
LIMIT=500 STEPS=100 RESTARTS=3 BATCH=${BATCH:-500}
SKIP_EVADED=${SKIP_EVADED:-1}  # as every committed run: each attack after the first only on the images still defended
RUNS=runs/adaptive
SETTINGS=()  # RADIUS for robust-margin's ball; FPR_AMONG for what the target FPR is counted among
if [ -n "${RADIUS:-}" ]; then SETTINGS+=(--radius "$RADIUS"); fi
if [ -n "${FPR_AMONG:-}" ]; then SETTINGS+=(--fpr-among "$FPR_AMONG"); fi  # all (default) or correct
if [ "$SKIP_EVADED" = 1 ]; then SETTINGS+=(--skip-evaded); fi
if [ -n "${SMOKE:-}" ]; then LIMIT=32 STEPS=5 RESTARTS=1 BATCH=32 EPS=8/255 RUNS=runs/adaptive-smoke; fi
MODELS=("$@")
if [ ${#MODELS[@]} -eq 0 ]; then
    MODELS=(cifar10-resnet10-standard cifar10-resnet10-robust cifar10-resnet10-quasirobust)
fi
mkdir -p "$OUT" "$DATA_ROOT" "$RUNS"
if [ "$DATA" = cifar10 ] && [ ! -d "$DATA_ROOT/cifar10/train" ]; then
    tar xzf .device-data/cifar10-imagefolder.tar.gz -C "$DATA_ROOT"
fi
PY=${PYTHON:-python3}
for model in "${MODELS[@]}"; do  # every model must have travelled (device_tree.sh hide): said before any work
    $PY -c "import sys, robgen; robgen.load_model(sys.argv[1])" "$model" 2>/dev/null || { echo "$model does not load here: carry its checkpoint folder (see this script's header on device_tree.sh hide)" >&2; exit 1; }
done
for model in "${MODELS[@]}"; do
    # the run's folder is named by its settings too: a finished run is skipped only when these very settings made it
    # (a smoke run, or one with another RADIUS, EPS, BATCH, DETECTORS or FPR_AMONG under one TAG, is never taken for it)
    among=""; if [ "${FPR_AMONG:-all}" != all ]; then among=" $FPR_AMONG"; fi  # unset: the folders of before
    skipping=""; if [ "$SKIP_EVADED" != 1 ]; then skipping=" every-image"; fi  # the default: the folders of before
    made_by=$(echo "$DATA $DETECTORS $EPS ${RADIUS:-} $LIMIT $STEPS $RESTARTS $BATCH$among$skipping" | sha1sum | cut -c1-8)
    run="$RUNS/$model${TAG:-}-$made_by"
    if [ -e "$run/results.json" ]; then echo "$model: done before"; else
        $PY -m robgen adaptive --model "$model" --data "$DATA" --data-root "$DATA_ROOT" --detector "$DETECTORS" \
            --eps "$EPS" --limit "$LIMIT" --steps "$STEPS" --restarts "$RESTARTS" --batch-size "$BATCH" \
            ${SETTINGS[@]+"${SETTINGS[@]}"} --out "$run" > "$OUT/adaptive-$model${TAG:-}.log" 2>&1 || { tail -n 20 "$OUT/adaptive-$model${TAG:-}.log"; exit 1; }
    fi
    # one archive per model: a call brings back at most 8 files, none deeper than $OUT/a/b/ (detectors/ has one per
    # detector); unpack here with  mkdir -p results/adaptive/M && tar xzf adaptive-M.tar.gz -C results/adaptive/M
    tar czf "$OUT/adaptive-$model${TAG:-}.tar.gz" -C "$run" results.json results.md adaptive_dara.png detectors
    tail -n 12 "$OUT/adaptive-$model${TAG:-}.log" 2>/dev/null || true
done
ls -la "$OUT"
