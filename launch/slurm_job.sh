# Body of launch/slurm_single_node.sbatch and launch/slurm_multi_node.sbatch, sourced by
# them in the batch shell (first node of the allocation). Not meant to be run by hand.
#
# 1. Environment: launch/env_defaults.sh (conf/local/env.sh, then NCCL/allocator defaults);
#    threads per process are set per node in launch/node_entry.sh.
# 2. `srun` starts launch/node_entry.sh once per node (or once per GPU with
#    L2A_LAUNCHER=srun); it starts torchrun / the DeepSpeed launcher there.
# 3. Preemption and time limits: Slurm sends USR1 to this shell (`--signal=B:USR1@<s>`);
#    we forward it to the job step, the trainer finishes its step, writes a checkpoint and
#    exits with 75; we then `scontrol requeue` the job. The requeued job runs this script
#    again with the same job id, hence the same run directory, and `train.resume=auto`.
#
# Knobs (environment variables, all optional):
#   L2A_LAUNCHER        torchrun (default) | deepspeed | srun (one task per GPU, no launcher)
#   L2A_NPROC_PER_NODE  processes per node (default: GPUs allocated on the node, else 1)
#   L2A_MODULE          Python module to run (default: train)
#   L2A_MAX_REQUEUES    stop requeueing after this many restarts (default: 100)
#   L2A_ENV_FILE        sourced before anything else (default: conf/local/env.sh)
#   PYTHON              interpreter (default: .venv/bin/python if present, else python3)
#   MASTER_PORT         rendezvous port (default: derived from the job id)

set -uo pipefail

_l2a_log() { echo "[l2a-slurm $(date +%FT%T)] $*"; }

if [[ -z ${SLURM_JOB_ID:-} ]]; then
    echo "error: launch/slurm_job.sh runs inside a Slurm job: sbatch launch/slurm_single_node.sbatch ..." >&2
    exit 2
fi
cd "$L2A_ROOT" || exit 2

# shellcheck source=launch/env_defaults.sh
source "$L2A_ROOT/launch/env_defaults.sh"

if [[ -z ${PYTHON:-} ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=python3; fi
fi
L2A_LAUNCHER=${L2A_LAUNCHER:-torchrun}
L2A_MODULE=${L2A_MODULE:-train}
L2A_MAX_REQUEUES=${L2A_MAX_REQUEUES:-100}
L2A_REQUEUE_EXIT_CODE=${L2A_REQUEUE_EXIT_CODE:-75}
case $L2A_LAUNCHER in
    torchrun | deepspeed | srun) ;;
    *) echo "error: L2A_LAUNCHER must be torchrun, deepspeed or srun, got '$L2A_LAUNCHER'" >&2; exit 2 ;;
esac

# Processes per node: one per allocated GPU. SLURM_GPUS_ON_NODE is set when GPUs were
# requested; SLURM_GPUS_PER_NODE may read "h100:8".
if [[ -z ${L2A_NPROC_PER_NODE:-} ]]; then
    L2A_NPROC_PER_NODE=${SLURM_GPUS_ON_NODE:-}
    if [[ -z $L2A_NPROC_PER_NODE && -n ${SLURM_GPUS_PER_NODE:-} ]]; then
        L2A_NPROC_PER_NODE=${SLURM_GPUS_PER_NODE##*:}
    fi
    if ! [[ $L2A_NPROC_PER_NODE =~ ^[0-9]+$ ]] || (( L2A_NPROC_PER_NODE < 1 )); then
        L2A_NPROC_PER_NODE=1
    fi
fi
NNODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
CPUS_PER_NODE=${SLURM_CPUS_ON_NODE:-$(nproc)}

MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$(( 29500 + SLURM_JOB_ID % 20000 ))}

export PYTHON L2A_LAUNCHER L2A_MODULE L2A_NPROC_PER_NODE MASTER_ADDR MASTER_PORT
# The run directory must survive a requeue (same job id, new start): name it after the job.
args=("$@")
has_run_dir=0
for a in "$@"; do [[ $a == hydra.run.dir=* ]] && has_run_dir=1; done
if (( ! has_run_dir )) && [[ $L2A_MODULE == train ]]; then
    args+=("hydra.run.dir=outputs/\${name}/slurm-${SLURM_JOB_ID}")
fi
RESTARTS=${SLURM_RESTART_COUNT:-0}
if (( RESTARTS > 0 )) && [[ $L2A_MODULE == train ]]; then
    args+=("train.resume=auto")
fi

srun_args=(--nodes="$NNODES" --kill-on-bad-exit=1 --unbuffered)
if [[ $L2A_LAUNCHER == srun ]]; then
    srun_args+=(--ntasks-per-node="$L2A_NPROC_PER_NODE" --ntasks=$(( NNODES * L2A_NPROC_PER_NODE ))
                --cpus-per-task=$(( CPUS_PER_NODE / L2A_NPROC_PER_NODE > 0 ? CPUS_PER_NODE / L2A_NPROC_PER_NODE : 1 )))
else
    # Since Slurm 22.05 srun does not inherit --cpus-per-task from the allocation.
    srun_args+=(--ntasks-per-node=1 --ntasks="$NNODES" --cpus-per-task="$CPUS_PER_NODE")
fi
(( NNODES > 1 )) && srun_args+=(--label)

_l2a_log "job ${SLURM_JOB_ID} start $(( RESTARTS + 1 )) on ${SLURM_JOB_NODELIST}: ${NNODES} node(s) x" \
    "${L2A_NPROC_PER_NODE} process(es) via ${L2A_LAUNCHER}, rendezvous ${MASTER_ADDR}:${MASTER_PORT}"
_l2a_log "python -m ${L2A_MODULE} ${args[*]}"

L2A_PREEMPTED=0
L2A_SRUN_PID=
_l2a_on_preempt() {
    _l2a_log "got $1 before the time limit: asking the trainer to checkpoint and exit"
    (( L2A_PREEMPTED )) && return
    L2A_PREEMPTED=1
    [[ -z $L2A_SRUN_PID ]] && return
    # srun passes the signal on to every process of the step (the launchers ignore it).
    # Repeat it: a trainer still loading its model has no handler yet and would miss it.
    ( while kill -USR1 "$L2A_SRUN_PID" 2>/dev/null; do sleep "${L2A_RESIGNAL_S:-30}"; done ) &
}
_l2a_on_term() {
    # scancel, the time limit or Slurm's own preemption: the step gets SIGTERM from Slurm
    # directly (the trainer checkpoints on it); just wait for it to finish.
    _l2a_log "got SIGTERM: waiting for the job step to stop"
}
trap '_l2a_on_preempt SIGUSR1' USR1
trap _l2a_on_term TERM

srun "${srun_args[@]}" bash "$L2A_ROOT/launch/node_entry.sh" "${args[@]}" &
L2A_SRUN_PID=$!
while :; do
    wait "$L2A_SRUN_PID"
    rc=$?
    # wait returns early (>128) when a trapped signal arrives; srun may still be running.
    if (( rc > 128 )) && kill -0 "$L2A_SRUN_PID" 2>/dev/null; then continue; fi
    break
done

if (( rc == 0 )); then
    _l2a_log "job step finished"
    exit 0
fi
if (( rc == L2A_REQUEUE_EXIT_CODE || L2A_PREEMPTED )); then
    state=$(squeue -h -j "$SLURM_JOB_ID" -o %T 2>/dev/null | head -n 1)
    if [[ $state != RUNNING ]]; then
        _l2a_log "job step exited with $rc; job is ${state:-gone}, not requeueing"
    elif (( RESTARTS >= L2A_MAX_REQUEUES )); then
        _l2a_log "job step exited with $rc; already restarted $RESTARTS times (L2A_MAX_REQUEUES), not requeueing"
    else
        _l2a_log "job step exited with $rc after a checkpoint request: requeueing job $SLURM_JOB_ID"
        if scontrol requeue "$SLURM_JOB_ID"; then
            exit 0
        fi
        _l2a_log "scontrol requeue failed (is the job requeueable? sbatch --requeue)"
    fi
fi
_l2a_log "job step failed with exit code $rc"
exit "$rc"
