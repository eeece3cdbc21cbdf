# Environment for training jobs, sourced in the batch shell by launch/slurm_job.sh and by
# the sbatch scripts that the Slurm sweep launcher (hydra/launcher=slurm) generates.
# Site settings first (modules, venv, NCCL_SOCKET_IFNAME, ...; see conf/local/README.md),
# then defaults that a value exported by the user or the site file overrides.

L2A_ENV_FILE=${L2A_ENV_FILE:-conf/local/env.sh}
if [[ -f $L2A_ENV_FILE ]]; then
    # shellcheck disable=SC1090
    source "$L2A_ENV_FILE"
fi

export PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# A rank that dies or hangs in a collective aborts the job instead of stalling it until
# the time limit; the job then resumes from its last checkpoint when resubmitted.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# Packed long sequences change activation sizes from step to step: avoid fragmentation.
if [[ -z ${PYTORCH_CUDA_ALLOC_CONF:-}${PYTORCH_ALLOC_CONF:-} ]]; then
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
fi
# Slurm 22.05-23.02 srun does not inherit --cpus-per-task from the allocation.
if [[ -n ${SLURM_CPUS_PER_TASK:-} && -z ${SRUN_CPUS_PER_TASK:-} ]]; then
    export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK
fi
