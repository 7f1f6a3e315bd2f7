#!/bin/bash
# One node's part of a run: torchrun over this node's GPUs, new or resumed. The sbatch files start it through
# srun, one task per node, from the repository root, with:
#   CONFIG   a shipped config's name (llm_runs/configs/NAME.yaml) or a path
#   SEED     train.seed (default 0)
#   RESUME   1: --resume the run folder, 0: start it (decided once, by the sbatch file, for every node)
#   OUTPUT_DIR, GPUS_PER_NODE, PORT (defaults runs, 8, 29500), EXTRA (more section.key=value overrides)
set -euo pipefail
: "${CONFIG:?CONFIG must name a config}" "${RESUME:?RESUME must be 0 or 1}"
SEED="${SEED:-0}" OUTPUT_DIR="${OUTPUT_DIR:-runs}" GPUS_PER_NODE="${GPUS_PER_NODE:-8}" PORT="${PORT:-29500}"
name="$(basename "$CONFIG")"
name="${name%.yaml}"
run="$OUTPUT_DIR/$name-seed$SEED"

nodes="${SLURM_NNODES:-1}"
if [ "$nodes" -gt 1 ]; then  # every node meets at the first node of the allocation
  head="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
  launch=(--nnodes "$nodes" --rdzv-backend c10d --rdzv-endpoint "$head:$PORT" --rdzv-id "$SLURM_JOB_ID")
else
  launch=(--standalone)
fi
# torchrun forwards SIGUSR1 (sbatch --signal=USR1@N) to its workers too, and gives them time to checkpoint
launch+=(--nproc-per-node "$GPUS_PER_NODE" --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
         --shutdown-timeout "${SHUTDOWN_TIMEOUT:-900}")

if [ "$RESUME" = 1 ]; then
  what=(--resume "$run")
else
  what=(--config "$CONFIG" "train.seed=$SEED" "train.output_dir=$OUTPUT_DIR")
fi
# shellcheck disable=SC2086  # EXTRA is a list of overrides
exec torchrun "${launch[@]}" -m llm_runs train "${what[@]}" --no-progress ${EXTRA:-}
