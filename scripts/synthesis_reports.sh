#!/usr/bin/env bash
# The synthesis results of one data set under results/synthesis/DATA/, from its shipped models.
#
#   bash scripts/synthesis_reports.sh DATA CANDIDATE_RUN ...   # 1. the quasi-robust budget sweep
#   bash scripts/ship_checkpoint.sh PICK DATA-resnet10-quasirobust DATA   # 2. ship the sweep's pick
#   bash scripts/synthesis_reports.sh DATA                     # 3. the judged synthesis-quality table with
#                                                              #    each generator's class grid, and the
#                                                              #    gradient-map figure (the paper's Fig. 4)
#   e.g. bash scripts/synthesis_reports.sh imagenette runs/imagenette-w32-quasi-*
#
# Models used: checkpoints/DATA-resnet10-{standard,quasirobust,robust} and the independently seeded
# standard model checkpoints/DATA-resnet10-standard-seed* (the second standard judge). The sweep
# compares the candidates with the standard model (or with REFERENCE=<the model they were fine-tuned
# from>, which must take the same input size) and lets the robust model judge their samples.
# Gradient maps are drawn on the first image of each of the first four classes of the test split
# (written to a temporary folder, not to the repository).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=$1; shift
PY=${PYTHON:-python}
S=checkpoints/$DATA-resnet10
OUT=results/synthesis/$DATA
SEEDED=$(ls -d $S-standard-seed* | head -1)
mkdir -p "$OUT"
if [ $# -gt 0 ]; then
  $PY -m robgen budget-sweep --models "${REFERENCE:-$S-standard}" "$@" --judge $S-robust --data "$DATA" --limit 1000 \
    --grid-columns 4 --out "$OUT/budget-sweep" --overwrite
  echo "next: ship the pick as $S-quasirobust (scripts/ship_checkpoint.sh), then run: bash $0 $DATA"
  exit 0
fi
$PY -m robgen synthesis-quality --models $S-robust $S-quasirobust $S-standard \
  --judges "$SEEDED" $S-standard $S-quasirobust $S-robust --n 16 --grid-columns 4 --out "$OUT" --overwrite
IMAGES=$(mktemp -d)
trap 'rm -rf "$IMAGES"' EXIT
$PY - "$DATA" "$IMAGES" <<'EOF'
import sys

from robgen import data
from robgen.images import save_image

name, folder = sys.argv[1], sys.argv[2]
test = data.load_dataset(name, "test")  # [0, 1] pixels at the stored size; gradmap applies each model's transform
classes = data.class_names(test)
seen = set()
for index in range(len(test)):
    x, y = test[index]
    if y not in seen and len(seen) < 4:
        seen.add(y)
        save_image(x, f"{folder}/{len(seen)}_{classes[y].replace(' ', '_')}.png")
EOF
$PY -m robgen gradmap --models $S-standard $S-quasirobust $S-robust --out "$OUT/gradient_maps.png" --overwrite \
  "$IMAGES"/*.png
ls -la "$OUT"
