#!/bin/bash
# one worker lane: pop the first line of queue.txt under a lock and run it, until the queue is empty
cd /work/main
Q=runs/gap/s4/queue.txt
while true; do
  cmd=$(flock $Q.lock bash -c "head -n1 $Q; sed -i '1d' $Q")
  [ -z "$cmd" ] && break
  name=$(echo "$cmd" | sed -E 's/.*--out runs\/gap\/s4\/([^ ]+).*/\1/')
  echo "$(date +%T) start $name" >> runs/gap/s4/lanes.log
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 bash -c "$cmd" > runs/gap/s4/$name.log 2>&1
  echo "$(date +%T) end $name rc=$?" >> runs/gap/s4/lanes.log
  echo "$cmd" >> runs/gap/s4/done_cmds.txt
done
