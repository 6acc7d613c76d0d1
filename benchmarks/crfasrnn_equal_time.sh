#!/bin/sh
# CRF-as-RNN against the CRF as post-processing at equal time, on the U-Net (ISBI 2012) and FC-DenseNet56 (CamVid)
# runs of benchmarks/crf_search.sh: from RUNS/M/best.pt, BUDGET seconds (default 150) of plain training (scored
# without and with the searched CRF after it) against BUDGET seconds of CRF-as-RNN training started from the same
# CRF (scored with its learned CRF). Usage: RUNS=runs [BUDGET=150] sh benchmarks/crfasrnn_equal_time.sh
# Results: RUNS/M-plain/{val_metrics,eval_crf}.json and RUNS/M-crfrnn/val_metrics.json; a finished run is kept.
set -e
RUNS=${RUNS:-runs}
BUDGET=${BUDGET:-150}
PW="${PYTHON:-python} -m pixelwise"
for pair in "unet unet_isbi2012_cpu 2.25 22.5 2.25" "fcdn56 fc_densenet56_camvid_cpu 3.75 22.5 7.5"; do
  set -- $pair
  m=$1 recipe=$2
  crf="{iterations: 5, w1: $3, theta_alpha: $4, theta_beta: $5, w2: 3, theta_gamma: 3}"
  common="-o model.init_from=$RUNS/$m/best.pt -o train.time_limit=$BUDGET -o train.max_steps=1000000 -o train.val_every=1000000"
  [ -f "$RUNS/$m-plain/val_metrics.json" ] || $PW train $recipe -o output_dir=$RUNS/$m-plain $common
  [ -f "$RUNS/$m-plain/eval_crf.json" ] || $PW eval --checkpoint "$RUNS/$m-plain/last.pt" --out "$RUNS/$m-plain/eval_crf.json" -o "infer.crf=$crf"
  [ -f "$RUNS/$m-crfrnn/val_metrics.json" ] || $PW train $recipe -o output_dir=$RUNS/$m-crfrnn $common -o "model.crf=$crf"
done
