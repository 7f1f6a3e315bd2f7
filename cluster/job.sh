#!/bin/bash
# What every sbatch file here does once it knows CONFIG and SEED: start or resume the run on the allocation's
# nodes, then requeue the job when the run stopped early with its checkpoint written (preempted.json).
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
name="$(basename "$CONFIG")"
run="${OUTPUT_DIR:-runs}/${name%.yaml}-seed${SEED:-0}"
if [ -f "$run/summary.json" ]; then
  echo "$run is finished (summary.json): nothing to do"
  exit 0
fi
RESUME=0
[ -f "$run/config.yaml" ] && RESUME=1
# a clock cadence besides the configs' step one: a preemption's grace period is short, a step of an 8B run is not
EXTRA="${EXTRA:-train.checkpoint_minutes=30}"
export CONFIG SEED RESUME EXTRA
status=0
srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash cluster/train.sh || status=$?
if [ -f "$run/preempted.json" ]; then  # stopped early, checkpoint written: run the rest in a new job
  job="${SLURM_ARRAY_JOB_ID:+${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}}"
  scontrol requeue "${job:-$SLURM_JOB_ID}" || true  # a preempting scheduler may have requeued it already
  exit 0
fi
exit "$status"
