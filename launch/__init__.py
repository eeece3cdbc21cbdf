"""Launching training on Slurm clusters and sweeping over configs (docs/LAUNCH.md).

- `launch/slurm_single_node.sbatch`, `launch/slurm_multi_node.sbatch`: one training run
  (srun -> one torchrun / DeepSpeed launcher per node -> one process per GPU), with
  checkpoint-and-requeue before the time limit.
- `hydra/launcher=slurm` (conf/hydra/launcher/slurm.yaml): Hydra multirun sweeps through
  submitit, one Slurm job per sweep point; `launch.submitit_job` is the job side.
- `hydra/launcher=local` (`launch.local_launcher`): the same sweeps on a machine without Slurm.
- `python -m launch.summarize <sweep dir>`: the sweep as a table and a plot.
"""
