#!/bin/sh
# crf-search on trained CamVid FCN-8s and ISBI U-Net runs, then eval without CRF, with the searched CRF and with
# the default CRF. Usage: RUNS=runs sh benchmarks/crf_search.sh  (RUNS/fcn8s and RUNS/unet: runs of
# `pixelwise train fcn8s_camvid_cpu` and `pixelwise train unet_isbi2012_cpu`). Results: RUNS/*/crf_search.json
# and RUNS/*/eval_{plain,crf,crf_default}.json.
set -e
RUNS=${RUNS:-runs}
PW="${PYTHON:-python} -m pixelwise"
for m in fcn8s unet; do
  $PW crf-search --checkpoint "$RUNS/$m/best.pt" --images 20 --out "$RUNS/$m/crf_search.json"
  $PW eval --checkpoint "$RUNS/$m/best.pt" --out "$RUNS/$m/eval_plain.json"
  best=$(${PYTHON:-python} -c "import json, sys; b = json.load(open(sys.argv[1]))['best']; print(json.dumps(b) if b else '')" "$RUNS/$m/crf_search.json")
  if [ -n "$best" ]; then $PW eval --checkpoint "$RUNS/$m/best.pt" --out "$RUNS/$m/eval_crf.json" -o "infer.crf=$best"; fi
  $PW eval --checkpoint "$RUNS/$m/best.pt" --out "$RUNS/$m/eval_crf_default.json" -o "infer.crf={}"
done
