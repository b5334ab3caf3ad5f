#!/bin/bash
# evaluate (test split, plain and temperature-scaled) every finished run of runs/gap/s4 that lacks it
cd /work/main
for r in runs/gap/s4/*-s[0-9]; do
  [ -f $r/model.json ] && [ -f $r/run.json ] || continue
  [ -f $r/eval/test/metrics.json ] || OMP_NUM_THREADS=1 .venv/bin/popevit evaluate $r --device cpu > /dev/null 2>> runs/gap/s4/eval_err.log
  [ -f $r/eval/test-ts/metrics.json ] || OMP_NUM_THREADS=1 .venv/bin/popevit evaluate $r --device cpu --calibrate > /dev/null 2>> runs/gap/s4/eval_err.log
done
