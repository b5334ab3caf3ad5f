#!/bin/bash
# Distillation inside issue 10's 30-minute budget on 2 cores (RESULTS.md section 18): a ResNet18 teacher trained
# from scratch for TEACHER_EPOCHS epochs (default 4), then the residual-stem ViT (configs/gap_vit_resstem.yaml) with
# DeiT's distillation token, capped at what the teacher left of the 30 minutes. Both stages count in the budget.
#   usage: bash results/gap_s13/chain_distill.sh hard|soft SEED --out runs/gap/pe/distill_MODE-sSEED
# Soft mode uses DeiT's soft-distillation settings (Touvron et al. 2021, arXiv:2012.12877: tau 3, lambda 0.1); hard
# mode DeiT's lambda 0.5. The evaluations at 128 and 192 px and the archive follow, as for the other runs.
set -eu
mode=${1:?hard|soft}; seed=${2:?seed}; [ "${3:-}" = --out ] || { echo "usage: $0 hard|soft SEED --out DIR" >&2; exit 2; }
out=${4:?--out DIR}
te=${TEACHER_EPOCHS:-4}; se=${STUDENT_EPOCHS:-8}
cd "$(dirname "$0")/../.."
P=.venv/bin/popevit
M="--manifest runs/splits/kaggle_train_seed0.csv"
teacher=${out}_teacher
$P train $M --config configs/gap_resnet18.yaml --set train.threads=2 --set train.max_epochs=$te --set train.max_minutes=15 --set train.seed=$seed --out $teacher
left=$(python3 -c "import json; print(round(30 - json.load(open('$teacher/run.json'))['wall_s'] / 60, 2))")
echo "student budget: $left min"
if [ "$mode" = soft ]; then kd="--set model.distill.mode=soft --set model.distill.tau=3 --set model.distill.alpha=0.1"
else kd="--set model.distill.mode=hard --set model.distill.alpha=0.5"; fi
$P train $M --config configs/gap_vit_resstem.yaml --set train.max_epochs=$se --set train.max_minutes=$left --set train.seed=$seed --set model.distill.teacher=$teacher $kd --out $out
for r in $teacher $out; do
  $P evaluate $r --device cpu && $P evaluate $r --device cpu --img-size 192
done
$P archive $teacher $out --out results/gap_pe/archived
