#!/bin/bash
# evaluate (test split at 128 px and at 192 px) every finished run of runs/gap/s5 that lacks it
cd "$(dirname "$0")/../.."
for r in runs/gap/s5/*-s[0-9]; do
  [ -f $r/model.json ] && [ -f $r/run.json ] || continue
  [ -f $r/eval/test/metrics.json ] || OMP_NUM_THREADS=1 .venv/bin/popevit evaluate $r --device cpu > /dev/null 2>> runs/gap/s5/eval_err.log
  [ -f $r/eval/test-192px/metrics.json ] || OMP_NUM_THREADS=1 .venv/bin/popevit evaluate $r --device cpu --img-size 192 > /dev/null 2>> runs/gap/s5/eval_err.log
done
