#!/usr/bin/env bash
# The GPU check: one command that proves the CUDA path on a fresh copy of the repository and measures it.
#
#   bash scripts/gpu_check.sh                      # on a GPU machine (about 5 minutes on one H100)
#   bash scripts/gpu_check.sh --out-dir DIR         # table.md and cuda_tests.log into DIR (default results/gpu_check)
#   bash scripts/gpu_check.sh --device cpu --tiny  # the CPU side, CI-sized (what tests/test_gpu_check.py runs)
#
# Writes its own 240 x 240 data, runs tests/test_cuda.py, times every training step and evaluation in float32
# (TF32 off and on) and bf16 in both memory layouts, the SFT step variants, 1-epoch train_sft.py and
# train_student_kd.py processes with --amp --num-workers 4, and a --resume after interrupting train_sft.py;
# prints one markdown table and writes it to DIR/table.md. Exit code 1 when a test or a run failed.
# Needs python3 with torch, numpy, h5py, scipy, scikit-image, tqdm, tensorboard, torchmetrics, matplotlib and
# pytest; no nibabel, no network. Other flags go to scripts/benchmark.py (see its --help). Set PYTHON to choose
# the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/benchmark.py --check "$@"
