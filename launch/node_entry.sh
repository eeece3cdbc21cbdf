#!/usr/bin/env bash
# Per-node entry point, started by `srun` from launch/slurm_job.sh: one task per node that
# runs torchrun or the DeepSpeed launcher with one process per GPU, or (L2A_LAUNCHER=srun)
# one task per GPU that runs the trainer itself. Arguments are Hydra overrides.
# The batch side exports PYTHON, L2A_LAUNCHER, L2A_MODULE, L2A_NPROC_PER_NODE, MASTER_ADDR
# and MASTER_PORT.
set -euo pipefail

: "${PYTHON:?}" "${L2A_LAUNCHER:?}" "${L2A_MODULE:?}" "${L2A_NPROC_PER_NODE:?}"
: "${MASTER_ADDR:?}" "${MASTER_PORT:?}"
NPROC=$L2A_NPROC_PER_NODE
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
NODE_RANK=${SLURM_NODEID:-0}

# Threads per process: this task's CPUs shared by the processes it starts.
if [[ -z ${OMP_NUM_THREADS:-} ]]; then
    cpus=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-$(nproc)}}
    if [[ $L2A_LAUNCHER == srun ]]; then per=$cpus; else per=$(( cpus / NPROC )); fi
    export OMP_NUM_THREADS=$(( per > 0 ? per : 1 ))
fi

# SIGUSR1 means "checkpoint and exit" to the trainer. Slurm delivers a step's signals to
# every process in it, and USR1 would kill torchrun / the DeepSpeed launcher (they don't
# handle it). An ignored signal stays ignored across exec and fork, so the launchers
# survive it, while the trainer installs its own handler.
trap '' USR1

case $L2A_LAUNCHER in
    torchrun)
        if (( NNODES > 1 )) || [[ ${L2A_RDZV:-} == c10d ]]; then
            rdzv=(--nnodes="$NNODES" --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"
                  --rdzv-id="${SLURM_JOB_ID:-l2a}")
        else
            rdzv=(--standalone)  # picks a free port: several one-node jobs may share a host
        fi
        exec "$PYTHON" -m torch.distributed.run "${rdzv[@]}" --nproc-per-node="$NPROC" \
            --max-restarts=0 -m "$L2A_MODULE" "$@"
        ;;
    deepspeed)
        # deepspeed.launcher.launch is the per-node half of the `deepspeed` CLI; world_info
        # maps every host to its local device ids.
        world_info=$("$PYTHON" - "$NPROC" <<'EOF'
import base64, json, os, subprocess, sys
n = int(sys.argv[1])
nodes = os.environ.get("SLURM_JOB_NODELIST")
hosts = (subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                        check=True).stdout.split() if nodes else ["localhost"])
print(base64.urlsafe_b64encode(json.dumps({h: list(range(n)) for h in hosts}).encode()).decode())
EOF
)
        exec "$PYTHON" -u -m deepspeed.launcher.launch --world_info="$world_info" \
            --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
            --no_local_rank --module "$L2A_MODULE" "$@"
        ;;
    srun)
        export RANK=${SLURM_PROCID:?} LOCAL_RANK=${SLURM_LOCALID:?} WORLD_SIZE=${SLURM_NTASKS:?}
        export LOCAL_WORLD_SIZE=$NPROC
        exec "$PYTHON" -m "$L2A_MODULE" "$@"
        ;;
    *)
        echo "error: L2A_LAUNCHER must be torchrun, deepspeed or srun, got '$L2A_LAUNCHER'" >&2
        exit 2
        ;;
esac
