#!/usr/bin/env bash
# Example Slurm job: one training script on several nodes x GPUs with torchrun (DDP, NCCL).
# Submit with e.g.:  sbatch --nodes=2 scripts/slurm_train.sh train_sft.py --data-root data/mrbrains --acc 4x --exp-dir results/sft-4x
# Each node starts one torchrun, which starts one process per GPU; rank 0 writes checkpoints and logs.
# The batch size is per process: the effective batch is --batch-size x nodes x GPUs per node (see config.json);
# add --scale-lr to scale the learning rate with it.
#SBATCH --job-name=sftkd
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
srun torchrun \
    --nnodes="$SLURM_NNODES" \
    --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_id="$SLURM_JOB_ID" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$HEAD_NODE:29500" \
    "$@" --device cuda
