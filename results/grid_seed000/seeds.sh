#!/bin/bash
# Seeds 1 and 2 of the grid's best point and of seed 000's default point (seed 0 of both is in runs/study/grid).
# usage: bash results/grid_seed000/seeds.sh SEED   (run from the repository root)
s=$1
M=runs/splits/kaggle_train_seed0.csv
C=configs/grid_seed000_vit.yaml
.venv/bin/popevit train --config $C --manifest $M --seed $s --set model.dropout=0.2 --set model.patch_size=8 --set optim.lr=0.001 --out runs/study/grid_seeds/dropout-0.2_patch_size-8_lr-0.001_seed-$s
.venv/bin/popevit train --config $C --manifest $M --seed $s --set model.dropout=0.1 --set model.patch_size=16 --set optim.lr=0.0003 --out runs/study/grid_seeds/dropout-0.1_patch_size-16_lr-0.0003_seed-$s
