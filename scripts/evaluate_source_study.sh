#!/usr/bin/env bash
# Evaluate runs of the source-confound study (docs/experiments/source_confound.md) on the Kaggle test split, on all
# of Br35H (external; also on the images with no duplicate in the run's training split), and on the Br35H groups
# held out by the joint Kaggle + Br35H split.
#   scripts/evaluate_source_study.sh RUN...      (needs runs/splits/kaggle_seed0.csv and runs/splits/kaggle_br35h_seed0.csv)
set -euo pipefail
BR35H=${BR35H:-../shared/data/br35h}
JOINT=${JOINT:-runs/splits/kaggle_br35h_seed0.csv}
for run in "$@"; do
  if grep -q ',source$' "$run/manifest.csv" 2>/dev/null || head -1 "$run/manifest.csv" | grep -q 'source'; then
    popevit evaluate "$run" --source kaggle --device cpu                              # same images as the Kaggle split
  else
    popevit evaluate "$run" --device cpu
  fi
  popevit evaluate "$run" --data "$BR35H" --label-map "yes=tumor,no=notumor,glioma|meningioma|pituitary=tumor" --device cpu
  popevit evaluate "$run" --manifest "$JOINT" --source br35h --label-map "glioma|meningioma|pituitary=tumor" --device cpu
done
