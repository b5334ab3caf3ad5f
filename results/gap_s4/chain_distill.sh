#!/bin/bash
# Distillation inside the 15-min budget: a ResNet18 teacher trained for 1 epoch (cap 7.5 min), then the recipe ViT
# with DeiT's hard distillation token, capped at what the teacher left of the 15 minutes.
set -e
cd /work/main
B=".venv/bin/popevit train --manifest runs/splits/kaggle_train_seed0.csv --set train.threads=1"
$B --config configs/gap_resnet18.yaml --set train.max_epochs=1 --set optim.warmup_epochs=0 --set train.max_minutes=7.5 --set train.seed=0 --out runs/gap/s4/distill_teacher-s0
left=$(python3 -c "import json; print(round(15 - json.load(open('runs/gap/s4/distill_teacher-s0/run.json'))['wall_s'] / 60, 2))")
echo "student budget: $left min"
$B --config configs/gap_vit_recipe.yaml --set train.max_epochs=2 --set optim.warmup_epochs=0.5 --set train.max_minutes=$left --set model.distill.teacher=runs/gap/s4/distill_teacher-s0 --set model.distill.mode=hard --set train.seed=0 --out runs/gap/s4/distill_hard-s0
