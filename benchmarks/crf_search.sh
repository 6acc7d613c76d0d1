#!/bin/sh
# crf-search on trained runs (CamVid FCN-8s and FC-DenseNet56, ISBI U-Net), then eval without CRF, with the searched
# CRF (torch backend, and pydensecrf for the reference's score) and with the default CRF.
# Usage: RUNS=runs [MODELS="fcn8s fcdn56 unet"] sh benchmarks/crf_search.sh  (RUNS/fcn8s, RUNS/fcdn56, RUNS/unet:
# runs of `pixelwise train fcn8s_camvid_cpu`, `fc_densenet56_camvid_cpu` and `unet_isbi2012_cpu`). Results:
# RUNS/*/crf_search.json and RUNS/*/eval_{plain,crf,crf_pydensecrf,crf_default}.json; a file already there is kept.
set -e
RUNS=${RUNS:-runs}
PY=${PYTHON:-python}
PW="$PY -m pixelwise"
for m in ${MODELS:-fcn8s fcdn56 unet}; do
  [ -f "$RUNS/$m/crf_search.json" ] || $PW crf-search --checkpoint "$RUNS/$m/best.pt" --images 20 --out "$RUNS/$m/crf_search.json"
  [ -f "$RUNS/$m/eval_plain.json" ] || $PW eval --checkpoint "$RUNS/$m/best.pt" --out "$RUNS/$m/eval_plain.json"
  best=$($PY -c "import json, sys; b = json.load(open(sys.argv[1]))['best']; print(json.dumps(b) if b else '')" "$RUNS/$m/crf_search.json")
  if [ -n "$best" ]; then
    [ -f "$RUNS/$m/eval_crf.json" ] || $PW eval --checkpoint "$RUNS/$m/best.pt" --out "$RUNS/$m/eval_crf.json" -o "infer.crf=$best"
    ref=$($PY -c "import json, sys; b = json.loads(sys.argv[1]); b['backend'] = 'pydensecrf'; print(json.dumps(b))" "$best")
    [ -f "$RUNS/$m/eval_crf_pydensecrf.json" ] || $PW eval --checkpoint "$RUNS/$m/best.pt" --out "$RUNS/$m/eval_crf_pydensecrf.json" -o "infer.crf=$ref"
  fi
  [ -f "$RUNS/$m/eval_crf_default.json" ] || $PW eval --checkpoint "$RUNS/$m/best.pt" --out "$RUNS/$m/eval_crf_default.json" -o "infer.crf={}"
done
