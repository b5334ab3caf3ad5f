#!/bin/bash
# One worker lane of the gap experiments (RESULTS.md sections 9 to 11): pop the first line of DIR/queue.txt under a
# lock and run it with THREADS CPU threads, until the queue is empty. Start it once per lane:
#   setsid nohup bash results/lane.sh runs/gap/s5 1 &   (twice: two 1-thread lanes side by side, sections 9 and 10)
#   setsid nohup bash results/lane.sh runs/gap/s6 2 &   (once: one run at a time on both cores, section 11)
# Each queue line is a shell command whose `--out DIR/NAME` names the run; its output goes to DIR/NAME.log, its
# start and end to DIR/lanes.log, and the command to DIR/done_cmds.txt.
set -u
D=${1:?usage: results/lane.sh DIR THREADS}
T=${2:?usage: results/lane.sh DIR THREADS}
cd "$(dirname "$0")/.."
Q=$D/queue.txt
while true; do
  cmd=$(flock $Q.lock bash -c "head -n1 $Q; sed -i '1d' $Q")
  [ -z "$cmd" ] && break
  name=$(echo "$cmd" | sed -E "s#.*--out $D/([^ ]+).*#\1#")
  echo "$(date +%T) start $name" >> $D/lanes.log
  OMP_NUM_THREADS=$T MKL_NUM_THREADS=$T bash -c "$cmd" > $D/$name.log 2>&1
  echo "$(date +%T) end $name rc=$?" >> $D/lanes.log
  echo "$cmd" >> $D/done_cmds.txt
done
