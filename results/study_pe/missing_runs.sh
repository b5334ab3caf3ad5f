#!/bin/bash
# the 6 grid points the two-worker sweep left (duplicate grid draws were pruned, see the closing note)
q() { for spec in "$@"; do pe=${spec%:*}; s=${spec#*:}; OMP_NUM_THREADS=1 .venv/bin/popevit train --config configs/study_pe_vit.yaml --manifest runs/study/pe/manifest.csv --out runs/study/pe/pos_enc-${pe}_seed-${s} --set model.pos_enc=$pe --set train.seed=$s > runs/study/missing_${pe}_${s}.log 2>&1; done; }
q learnable:0 pope_mixed:0 pope:1 &
q rope_axial:1 rope_mixed:1 sincos:1 &
wait
