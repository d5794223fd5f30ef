#!/usr/bin/env bash
# The GPU check: one command that proves the CUDA path on a fresh copy of the repository and measures it.
#
#   bash scripts/gpu_check.sh --out-dir DIR          # on a GPU machine (estimated 3-4 minutes on one H100 / H200)
#   bash scripts/gpu_check.sh --out-dir DIR --only tests steps   # some of its parts: tests steps processes resume
#   bash scripts/gpu_check.sh --device cpu --tiny    # the CPU side, CI-sized (what tests/test_gpu_check.py runs)
#
# Writes its own 240 x 240 data and runs four parts, each in its own process: tests/test_cuda.py; every training
# step and evaluation in float32 (TF32 off, TF32 convolutions) and bf16 in both memory layouts, with the SFT step
# variants; 1-epoch train_sft.py and train_student_kd.py processes with --amp --num-workers 4; a --resume after
# interrupting train_sft.py. Every wait has a limit and the whole check --time-limit (540 s): a hang or a failure
# is a FAILED cell with its log's end, and the rest still runs. Everything lands in DIR (default
# results/gpu_check): table.md, printed at the end whatever happened, and one folder of logs per part. Exit code 1
# when anything failed. Needs python3 with torch, numpy, h5py, scipy, scikit-image, tqdm, tensorboard,
# torchmetrics, matplotlib and pytest; no pytest-xdist, nibabel or network. Other flags go to scripts/gpu_check.py
# (see its --help). Set PYTHON to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" -m scripts.gpu_check --check "$@"
