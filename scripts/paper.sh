#!/usr/bin/env bash
# The paper's full protocol on a prepared data set: 4x and 5x, 150 epochs, Teacher, Student, SFT teacher and
# Std-KD / SFT-KD-Recon for the five paper KD methods, then evaluation, the table and the figure.
# Resumable: re-running skips finished runs and resumes interrupted ones (evaluation is redone).
#
#   bash scripts/paper.sh DATA_ROOT [RESULTS]
#   environment: EPOCHS (150), ACCS ("4x 5x"), KD_METHODS ("at fitnet cc fsp sp"),
#                TRAIN_FLAGS (e.g. "--device cuda --num-workers 4 --amp")
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "error: expected 1 or 2 arguments, got $#; usage: bash scripts/paper.sh DATA_ROOT [RESULTS]" \
        "(DATA_ROOT made by data/prepare.py)" >&2
    exit 2
fi
DATA_ROOT=$1
export RESULTS=${2:-results/$(basename "$DATA_ROOT")}
export KD_METHODS=${KD_METHODS:-at fitnet cc fsp sp}
EPOCHS=${EPOCHS:-150}
ACCS=${ACCS:-4x 5x}
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.."

eval_dirs=()
for acc in $ACCS; do
    bash scripts/train_all.sh "$DATA_ROOT" "$acc" "$EPOCHS"
    runs="$RESULTS/$acc"
    checkpoints=("$runs/teacher/best_model.pt" "$runs/student/best_model.pt" "$runs/sft/best_model.pt")
    for method in $KD_METHODS; do
        checkpoints+=("$runs/stdkd-$method/best_model.pt" "$runs/sftkd-$method/best_model.pt")
    done
    "$PYTHON" evaluate.py --checkpoints "${checkpoints[@]}" --data-root "$DATA_ROOT" --acc "$acc" \
        --out-dir "$RESULTS/eval_$acc" --save-recons --overwrite --device auto
    eval_dirs+=("$RESULTS/eval_$acc")
done
"$PYTHON" scripts/report.py --eval-dirs "${eval_dirs[@]}" --out-dir "$RESULTS" --overwrite
first_acc=${ACCS%% *}
first_method=${KD_METHODS%% *}
"$PYTHON" scripts/figure.py --eval-dir "$RESULTS/eval_$first_acc" --data-root "$DATA_ROOT" --acc "$first_acc" \
    --output "$RESULTS/figure_$first_acc.png" --overwrite \
    --models teacher student "stdkd-$first_method" "sftkd-$first_method"
echo "table: $RESULTS/table.md   figure: $RESULTS/figure_$first_acc.png   TensorBoard: tensorboard --logdir $RESULTS"
