#!/bin/bash
# Evaluate every finished run under DIR (a folder of run folders named NAME-sSEED) that lacks it: the test split at
# the training size, and, when EXTRA options are given, once more with them (e.g. --img-size 192, or --calibrate).
#   usage: bash scripts/evaluate_runs.sh DIR [EXTRA...]
# Errors go to DIR/eval_err.log.
set -u
D=${1:?usage: scripts/evaluate_runs.sh DIR [EXTRA...]}; shift
cd "$(dirname "$0")/.."
tag=""
if [ $# -gt 0 ]; then
  case "$*" in
    *--calibrate*) tag=test-ts ;;
    *--img-size*) tag=test-$(echo "$*" | sed -E 's/.*--img-size[ =]([0-9]+).*/\1/')px ;;
    *) echo "EXTRA must hold --calibrate or --img-size N" >&2; exit 2 ;;
  esac
fi
for r in "$D"/*-s[0-9]; do
  [ -f "$r/model.json" ] && [ -f "$r/run.json" ] || continue
  [ -f "$r/eval/test/metrics.json" ] || .venv/bin/popevit evaluate "$r" --device cpu > /dev/null 2>> "$D/eval_err.log"
  [ -z "$tag" ] || [ -f "$r/eval/$tag/metrics.json" ] || .venv/bin/popevit evaluate "$r" --device cpu "$@" > /dev/null 2>> "$D/eval_err.log"
done
