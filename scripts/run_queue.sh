#!/bin/bash
# A worker that runs a queue of training commands: pop the first line of DIR/queue.txt under a lock and run it with
# THREADS CPU threads, until the queue is empty. Start it once per worker:
#   setsid nohup bash scripts/run_queue.sh runs/gap/s5 1 &   (twice: two 1-thread workers side by side, 15-min budget)
#   setsid nohup bash scripts/run_queue.sh runs/gap/pe 2 &   (once: one run at a time on both cores, 30-min budget)
# Each queue line is a shell command whose `--out DIR/NAME` names the run; its output goes to DIR/NAME.log, its
# start and end to DIR/queue.log, and the command to DIR/done_cmds.txt. The records of what ran are the cmds.txt
# files under results/<experiment>/.
set -u
D=${1:?usage: scripts/run_queue.sh DIR THREADS}
T=${2:?usage: scripts/run_queue.sh DIR THREADS}
cd "$(dirname "$0")/.."
Q=$D/queue.txt
while true; do
  cmd=$(flock $Q.lock bash -c "head -n1 $Q; sed -i '1d' $Q")
  [ -z "$cmd" ] && break
  name=$(echo "$cmd" | sed -E "s#.*--out $D/([^ ]+).*#\1#")
  echo "$(date +%T) start $name" >> $D/queue.log
  OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T bash -c "$cmd" > $D/$name.log 2>&1
  echo "$(date +%T) end $name rc=$?" >> $D/queue.log
  echo "$cmd" >> $D/done_cmds.txt
done
