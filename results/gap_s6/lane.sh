#!/bin/bash
# session 6: one lane, one run at a time on both cores (the issue's budget: 30 minutes on 2 CPU cores);
# pops the first line of $D/queue.txt under a lock until the queue is empty
cd "$(dirname "$0")/../.."
D=runs/gap/s6
Q=$D/queue.txt
while true; do
  cmd=$(flock $Q.lock bash -c "head -n1 $Q; sed -i '1d' $Q")
  [ -z "$cmd" ] && break
  name=$(echo "$cmd" | sed -E 's/.*--out runs\/gap\/s6\/([^ ]+).*/\1/')
  echo "$(date +%T) start $name" >> $D/lanes.log
  OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 bash -c "$cmd" > $D/$name.log 2>&1
  echo "$(date +%T) end $name rc=$?" >> $D/lanes.log
  echo "$cmd" >> $D/done_cmds.txt
done
