#!/usr/bin/env bash
# The no-KD control for the second replication: arm C's student (S2..S5 from the SFT run) trained with --kd-method
# none, i.e. the SFT blocks fine-tuned without any teacher; then B, C and this arm scored on the MNI152 test block.
set -uo pipefail
# run from the repository root after the second replication's runs (results/replication/w8-8x-20), venv active
cd "$(dirname "$0")/../../.."
R=results/replication/w8-8x-20
D=docs/replication/w8-8x-20-nokd
one() {
    local s=$1 runs=$R/seed$1/8x
    OMP_NUM_THREADS=1 python train_student_kd.py --data-root $R/data --acc 8x --epochs 40 \
        --exp-dir $runs/stdkd-sftinit-none --seed $s --no-progress --lr-step-size 20 --augment \
        --kd-method none --teacher-checkpoint $runs/teacher/best_model.pt --init-from-sft $runs/sft/best_model.pt \
        --width 8 > $R/seed$s/nokd.log 2>&1 || { echo "seed $s failed"; return 1; }
    OMP_NUM_THREADS=1 python evaluate.py --checkpoints $runs/sftkd-at/best_model.pt $runs/stdkd-sftinit-at/best_model.pt \
        $runs/stdkd-sftinit-none/best_model.pt --names sftkd-at-seed$s stdkd-sftinit-at-seed$s stdkd-sftinit-none-seed$s \
        --data-root $R/data --split test --test-set mni152 --acc 8x --out-dir $D/mni152/seed$s --overwrite \
        --device cpu >> $R/seed$s/nokd.log 2>&1 && echo "== $(date +%T) seed $s done"
}
for pair in "71 72" "73 74" "75 76" "77 78" "79 80" "81 82" "83 84" "85 86" "87 88" "89 90"; do
    for s in $pair; do one $s & done
    wait
done
echo "== $(date +%T) all done"
