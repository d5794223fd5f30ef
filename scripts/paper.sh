#!/usr/bin/env bash
# The paper's protocol as the public SFT-KD-Recon code ran it, on a prepared data set: 4x and 5x, Teacher,
# Student, SFT teacher and Std-KD / SFT-KD-Recon for the five paper KD methods, then evaluation with every
# metric set, the table and the figure. Resumable: re-running skips finished runs and resumes interrupted ones
# (evaluation is redone).
#
#   bash scripts/paper.sh DATA_ROOT [RESULTS]
#   environment: EPOCHS (150), ACCS ("4x 5x"), KD_METHODS ("at-public fitnet cc fsp sp"),
#                TRAIN_FLAGS (e.g. "--device cuda --num-workers 4 --amp")
#
# As the public code: its masks (prepare DATA_ROOT with data/prepare.py --preset mrbrains|acdc, i.e.
# --mask-kind public; other masks get a warning); every block input zero-padded by 5 (--ref-padding 5); the
# SFT imitation term at the weight its code gives it, 1 / (batch x H x W) (it divides the mean L1 by the
# number of elements once more); each KD student in its two stages, EPOCHS epochs of the KD loss alone then
# EPOCHS of L1 alone from that stage's best student with a fresh optimiser (--feature-epochs; train_feature*.py
# then train_kd.sh without --imitation_required); AT as at-public, its formula; metrics per slice
# (measures.py) and per volume (evaluate.py), both in the table's folder (evaluate.py --metrics all).
# Not reproduced: FitNets, CC, FSP and SP are this project's formulas, not the public train_feature_*.py ones;
# the first stage's best student is chosen by validation L1, not by the validation KD loss; the public code's
# random draws (seeds, shuffles, initial weights) and its data files; its float32 metric arithmetic.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "error: expected 1 or 2 arguments, got $#; usage: bash scripts/paper.sh DATA_ROOT [RESULTS]" \
        "(DATA_ROOT made by data/prepare.py)" >&2
    exit 2
fi
DATA_ROOT=$1
export RESULTS=${2:-results/$(basename "$DATA_ROOT")}
export KD_METHODS=${KD_METHODS:-at-public fitnet cc fsp sp}
EPOCHS=${EPOCHS:-150}
ACCS=${ACCS:-4x 5x}
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."

first_acc=${ACCS%% *}
# Prints the SFT imitation weight 1 / (4 H W) (batch 4, the default: with another --batch-size in TRAIN_FLAGS
# the public weight changes with it) and warns on stderr about every mask that is not the public one.
imitation_weight=$("$PYTHON" - "$DATA_ROOT" $ACCS <<'PY'
import sys
import numpy as np
from data.masks import MaskError, load_mask, public_mask
from utils import UserError
root, accs = sys.argv[1], sys.argv[2:]
try:
    masks = {acc: load_mask(f"{root}/mask_{acc}.npy") for acc in accs}
except UserError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
height, width = masks[accs[0]].shape
print(1.0 / (4 * height * width))
for acc, mask in masks.items():
    try:
        same = np.array_equal(mask, public_mask(mask.shape, acc))
    except MaskError:
        same = False
    if not same:
        print(f"warning: {root}/mask_{acc}.npy is not the public SFT-KD-Recon mask, so this is not the paper's "
              "task; prepare the data with --preset mrbrains / acdc (--mask-kind public) to run it", file=sys.stderr)
PY
)
export TRAIN_FLAGS="--ref-padding 5 ${TRAIN_FLAGS:-}"
export SFT_FLAGS="--imitation-weight $imitation_weight"
export KD_FLAGS="--feature-epochs $EPOCHS"
export KD_EPOCHS=$((2 * EPOCHS))

eval_dirs=()
for acc in $ACCS; do
    bash scripts/train_all.sh "$DATA_ROOT" "$acc" "$EPOCHS"
    runs="$RESULTS/$acc"
    checkpoints=("$runs/teacher/best_model.pt" "$runs/student/best_model.pt" "$runs/sft/best_model.pt")
    for method in $KD_METHODS; do
        checkpoints+=("$runs/stdkd-$method/best_model.pt" "$runs/sftkd-$method/best_model.pt")
    done
    "$PYTHON" evaluate.py --checkpoints "${checkpoints[@]}" --data-root "$DATA_ROOT" --acc "$acc" \
        --out-dir "$RESULTS/eval_$acc" --save-recons --overwrite --device auto --metrics all
    eval_dirs+=("$RESULTS/eval_$acc")
done
"$PYTHON" -m scripts.report --eval-dirs "${eval_dirs[@]}" --out-dir "$RESULTS" --overwrite
first_method=${KD_METHODS%% *}
"$PYTHON" -m scripts.figure --eval-dir "$RESULTS/eval_$first_acc" --data-root "$DATA_ROOT" --acc "$first_acc" \
    --out-dir "$RESULTS/figure_$first_acc" --overwrite \
    --models teacher student "stdkd-$first_method" "sftkd-$first_method"
echo "table: $RESULTS/table.md   figure: $RESULTS/figure_$first_acc/figure.png   TensorBoard: tensorboard --logdir $RESULTS"
