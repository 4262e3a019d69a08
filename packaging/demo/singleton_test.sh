#!/bin/bash
# AJR's singleton verification job (after the replaced system's admin guide): submit it
# twice with the same name, the second with --hold. The first logs an artificial
# segfault and exits 1; AJR stops it and releases the second, which then runs.
#SBATCH -t 00:05:00
#SBATCH --dependency=singleton
#SBATCH --comment='{"APS": {"auto_resume_mode": "singleton_dependency"}}'
DATETIME=$(date +'date_%y-%m-%d_time_%H-%M-%S')
BEFORE=${AJR_TEST_SLEEP_BEFORE:-30}
AFTER=${AJR_TEST_SLEEP_AFTER:-60}
echo "AJR light-weight fault simulation test (auto resume mode: singleton_dependency)"
srun --output="$(pwd)/%x_%j_$DATETIME.log" bash -c \
  "echo 'Start time: $DATETIME' && echo 'Sleeping $BEFORE seconds' && sleep $BEFORE && \
   echo 'Rank0: (1) segmentation fault: artificial segfault' && \
   echo 'Sleep another $AFTER seconds' && sleep $AFTER && exit 1"
