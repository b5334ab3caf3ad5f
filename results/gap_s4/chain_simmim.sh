#!/bin/bash
# SimMIM inside the 15-min budget: pretraining on the split's training images (cap 7.5 min), then fine-tuning with
# layer-wise lr decay (configs/gap_vit_simmim_ft.yaml), capped at what pretraining left of the 15 minutes.
set -e
cd /work/main
M="--manifest runs/splits/kaggle_train_seed0.csv --set train.threads=1"
.venv/bin/popevit pretrain --config configs/pretrain_simmim_vit.yaml $M --set train.max_epochs=5 --set train.max_minutes=7.5 --set train.seed=0 --out runs/gap/s4/simmim_pre-s0
left=$(python3 -c "import json; print(round(15 - json.load(open('runs/gap/s4/simmim_pre-s0/pretrain.json'))['wall_s'] / 60, 2))")
echo "fine-tune budget: $left min"
.venv/bin/popevit train --config configs/gap_vit_simmim_ft.yaml $M --set train.max_epochs=4 --set optim.warmup_epochs=0.5 --set train.max_minutes=$left --set train.seed=0 --init runs/gap/s4/simmim_pre-s0/encoder.safetensors --out runs/gap/s4/simmim_ft-s0
