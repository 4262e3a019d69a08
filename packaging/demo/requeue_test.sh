#!/bin/bash
# AJR's requeue verification job (after the replaced system's admin guide): the step
# logs a start line, then an artificial segfault, then exits 1. AJR requeues it once
# (max_requeue_times 1); the second attempt fails the same way and stays failed.
#SBATCH -t 00:05:00
#SBATCH --comment='{"APS": {"auto_resume_mode": "requeue", "max_requeue_times": 1}}'
DATETIME=$(date +'date_%y-%m-%d_time_%H-%M-%S')
BEFORE=${AJR_TEST_SLEEP_BEFORE:-30}
AFTER=${AJR_TEST_SLEEP_AFTER:-60}
echo "AJR light-weight fault simulation test (auto resume mode: requeue), restart ${SLURM_RESTART_COUNT:-0}"
srun --output="$(pwd)/%x_%j_$DATETIME.log" bash -c \
  "echo 'Start time: $DATETIME' && echo 'Sleeping $BEFORE seconds' && sleep $BEFORE && \
   echo 'Rank0: (1) segmentation fault: artificial segfault' && \
   echo 'Sleep another $AFTER seconds' && sleep $AFTER && exit 1"
