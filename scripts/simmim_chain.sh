#!/bin/bash
# SimMIM inside a wall-clock budget: pretraining on the split's training images (capped at PRE_MIN), then fine-tuning
# with layer-wise lr decay (configs/experiments/budget_vit_simmim_ft.yaml), capped at what pretraining left of the
# budget. Defaults: the 15-minute, one-thread budget of docs/experiments/budget_15min.md.
#   usage: bash scripts/simmim_chain.sh SEED --out runs/DIR/simmim_ft-sSEED   (pretraining goes to ${out}_pre or $PRE_OUT)
set -eu
seed=${1:?seed}; [ "${2:-}" = --out ] || { echo "usage: $0 SEED --out DIR" >&2; exit 2; }
out=${3:?--out DIR}
budget=${BUDGET_MIN:-15}; pmin=${PRE_MIN:-7.5}
cd "$(dirname "$0")/.."
M="--manifest ${MANIFEST:-runs/splits/kaggle_train_seed0.csv} --set train.threads=${THREADS:-1}"
pre=${PRE_OUT:-${out}_pre}
.venv/bin/popevit pretrain --config configs/experiments/simmim_pretrain.yaml $M --set train.max_epochs=${PRE_EPOCHS:-5} --set train.max_minutes=$pmin --set train.seed=$seed --out $pre
left=$(python3 -c "import json; print(round($budget - json.load(open('$pre/pretrain.json'))['wall_s'] / 60, 2))")
echo "fine-tune budget: $left min"
.venv/bin/popevit train --config configs/experiments/budget_vit_simmim_ft.yaml $M --set train.max_epochs=${FT_EPOCHS:-4} --set optim.warmup_epochs=0.5 --set train.max_minutes=$left --set train.seed=$seed --init $pre/encoder.safetensors --out $out
