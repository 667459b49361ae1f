#!/usr/bin/env bash
# The paper's reproduction on all 10,000 CIFAR-10 test images (or all 3,925 Imagenette ones) for a session that is
# lent an accelerator: `python -m robgen reproduce` with its default attacks (PGD 8/255 and 16/255, APGD-CE) and
# the whole HE-PGD λ sweep, which take about two hours of the 2-core CPU for one CIFAR-10 model.
#
# Here (once):   mkdir -p .device-data && cp ../shared/data/cifar10-imagefolder.tar.gz .device-data/
#                (.device-data/ is git-ignored; name it in the device tool's `carry`)
#                bash scripts/device_tree.sh hide    # the tracked tree alone is over the 64 MiB a call carries;
#                                                    # `restore` after the calls, before any commit
#                A model that is not shipped yet (a run in runs/): name its folder in `carry` too.
#                APGD-CE comes from torchattacks, which the lent machines lack: bring its wheel once,
#                python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl torchattacks==3.5.1
#                (.whl/ is git-ignored), name .whl in `carry`, and begin the command with
#                python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;
# There:         bash scripts/device_reproduce.sh [MODEL]      # default: cifar10-resnet10-standard
#                The run keeps its finished attacks in runs/reproduce/<model>/.stages on the warm machine, so a
#                call cut at the 10-minute limit continues where it stopped when made again.
# Anywhere:      SMOKE=1 ROBGEN_DATA=~/.cache/robgen-data bash scripts/device_reproduce.sh
#                (the whole flow on 64 images and 3 attack steps: a few minutes on the CPU)
#
# Imagenette (DATA=imagenette): first the `stage` calls of scripts/device_imagenette.sh, with the model's checkpoint
#                travelling beside a part (the default `hide` and device_imagenette.sh's hide it):
#                bash scripts/device_tree.sh hide checkpoints/cifar10-* checkpoints/imagenette-resnet10-robust \
#                    checkpoints/imagenette-resnet10-quasirobust checkpoints/imagenette-resnet10-standard-seed0 results examples
#                then  DATA=imagenette ROBGEN_DATA=$HOME/robgen-data bash scripts/device_reproduce.sh imagenette-resnet10-standard
# $OUT gets reproduce-<model>.tar.gz (results.json, results.md, the figures), without the stages: unpack it into
# results/cifar10/ (or results/imagenette/) here when the model is the one the folder is about.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/device}
DATA_ROOT=${ROBGEN_DATA:-$PWD/.device-data}
DATA=${DATA:-cifar10}
MODEL=${1:-cifar10-resnet10-standard}
BATCH=${BATCH:-500}
EXTRA=() RUNS=runs/reproduce
if [ -n "${SMOKE:-}" ]; then EXTRA=(--limit 64 --steps 3 --reference-size 64) BATCH=32 RUNS=runs/reproduce-smoke; fi
mkdir -p "$OUT" "$DATA_ROOT" "$RUNS"
if [ "$DATA" = cifar10 ] && [ ! -d "$DATA_ROOT/cifar10/train" ]; then
    tar xzf .device-data/cifar10-imagefolder.tar.gz -C "$DATA_ROOT"
fi
PY=${PYTHON:-python3}
$PY -c "import torchattacks" 2>/dev/null || { echo "torchattacks is missing (the default attacks' APGD-CE needs it): see this script's header" >&2; exit 1; }
# the model must have travelled (a hidden checkpoint folder is not on the machine): said at once, not after the data
$PY -c "import sys, robgen; robgen.load_model(sys.argv[1])" "$MODEL" 2>/dev/null || { echo "$MODEL does not load here: carry its checkpoint folder (see this script's header on device_tree.sh hide)" >&2; exit 1; }
name=$(basename "$MODEL")
run="$RUNS/$name"  # a smoke run's folder is its own: never taken for a finished real run
log="$OUT/reproduce-$name.log"
if [ -e "$run/results.json" ]; then echo "$MODEL: done before"; else
    $PY -m robgen reproduce --model "$MODEL" --data "$DATA" --data-root "$DATA_ROOT" --batch-size "$BATCH" \
        "${EXTRA[@]}" --out "$run" > "$log" 2>&1 || { tail -n 20 "$log"; exit 1; }
fi
# one archive (a call brings back at most 8 files): unpack here with  tar xzf reproduce-<model>.tar.gz -C results/cifar10
find "$run" -maxdepth 1 -type f -printf '%f\n' | tar czf "$OUT/reproduce-$name.tar.gz" -C "$run" -T -
tail -n 12 "$log" 2>/dev/null || true
ls -la "$OUT"
