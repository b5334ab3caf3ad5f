#!/bin/bash
# one worker lane (session 5): pop the first line of $D/queue.txt under a lock, run it on one thread, until empty
cd "$(dirname "$0")/../.."
D=runs/gap/s5
Q=$D/queue.txt
while true; do
  cmd=$(flock $Q.lock bash -c "head -n1 $Q; sed -i '1d' $Q")
  [ -z "$cmd" ] && break
  name=$(echo "$cmd" | sed -E 's/.*--out runs\/gap\/s5\/([^ ]+).*/\1/')
  echo "$(date +%T) start $name" >> $D/lanes.log
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 bash -c "$cmd" > $D/$name.log 2>&1
  echo "$(date +%T) end $name rc=$?" >> $D/lanes.log
  echo "$cmd" >> $D/done_cmds.txt
done
