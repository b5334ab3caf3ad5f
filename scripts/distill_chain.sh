#!/bin/bash
# Distillation inside a wall-clock budget: a ResNet18 teacher trained from scratch, then a ViT student with DeiT's
# distillation token (Touvron et al. 2021, arXiv:2012.12877), capped at what the teacher left of the budget. Both
# stages count in the budget (the student's run.json records the teacher under `upstream`).
#   usage: bash scripts/distill_chain.sh hard|soft SEED --out runs/DIR/distill_MODE-sSEED
# The teacher goes to ${out}_teacher (or $TEACHER_OUT). Soft mode uses DeiT's soft-distillation settings (tau 3, lambda 0.1), hard mode
# DeiT's lambda 0.5. Defaults: the 30-minute budget on 2 cores (docs/experiments/recipe_ablation_30min.md); then both
# runs are evaluated at 128 and 192 px and archived into $ARCHIVE. The 15-minute, one-thread chain of
# docs/experiments/budget_15min.md is:
#   BUDGET_MIN=15 THREADS=1 TEACHER_EPOCHS=1 TEACHER_MIN=7.5 TEACHER_SET="--set optim.warmup_epochs=0" \
#   STUDENT_CONFIG=configs/experiments/budget_vit_convstem_mixup.yaml STUDENT_EPOCHS=2 \
#   STUDENT_SET="--set optim.warmup_epochs=0.5" ARCHIVE= bash scripts/distill_chain.sh hard 0 --out DIR
set -eu
mode=${1:?hard|soft}; seed=${2:?seed}; [ "${3:-}" = --out ] || { echo "usage: $0 hard|soft SEED --out DIR" >&2; exit 2; }
out=${4:?--out DIR}
budget=${BUDGET_MIN:-30}; threads=${THREADS:-2}
te=${TEACHER_EPOCHS:-4}; tmin=${TEACHER_MIN:-15}; se=${STUDENT_EPOCHS:-8}
tcfg=${TEACHER_CONFIG:-configs/experiments/budget_resnet18.yaml}
scfg=${STUDENT_CONFIG:-configs/experiments/budget_vit_resstem.yaml}
archive=${ARCHIVE-results/recipe_ablation_30min/archived}
cd "$(dirname "$0")/.."
P=.venv/bin/popevit
M="--manifest ${MANIFEST:-runs/splits/kaggle_train_seed0.csv} --set train.threads=$threads"
teacher=${TEACHER_OUT:-${out}_teacher}
$P train $M --config $tcfg --set train.max_epochs=$te --set train.max_minutes=$tmin ${TEACHER_SET:-} --set train.seed=$seed --out $teacher
left=$(python3 -c "import json; print(round($budget - json.load(open('$teacher/run.json'))['wall_s'] / 60, 2))")
echo "student budget: $left min"
if [ "$mode" = soft ]; then kd="--set model.distill.mode=soft --set model.distill.tau=3 --set model.distill.alpha=0.1"
else kd="--set model.distill.mode=hard --set model.distill.alpha=0.5"; fi
$P train $M --config $scfg --set train.max_epochs=$se ${STUDENT_SET:-} --set train.max_minutes=$left --set train.seed=$seed --set model.distill.teacher=$teacher $kd --out $out
[ -n "$archive" ] || exit 0
for r in $teacher $out; do
  $P evaluate $r --device cpu && $P evaluate $r --device cpu --img-size 192
done
$P archive $teacher $out --out $archive
