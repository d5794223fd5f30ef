#!/usr/bin/env bash
# The whole SFT-KD-Recon pipeline on the MNI152 brain template shipped with nilearn (no data, no network):
# prepare -> teacher, student, SFT teacher -> Std-KD and SFT-KD-Recon with AT -> evaluate -> table + figure.
#
#   bash scripts/demo.sh [--overwrite] [--coils N]
#
# --coils N: multi-coil data instead, N simulated birdcage coils on the template given a smooth random phase
# (--synthetic-phase 1), maps estimated by ESPIRiT from the undersampled k-space's ACS rows (DEMO_MAPS: espirit,
# acs-rss or true), a 5-row fully sampled centre at 32 x 32 (--center-fraction 0.16: ESPIRiT needs 4 rows or more).
#
# Outputs in results/demo (DEMO_OUT): table.md, figure.png (the test slice with the median teacher PSNR), eval/
# (per-slice metrics), runs/ (checkpoints and TensorBoard logs), data/. The defaults (32 x 32, 40 epochs, lr / 10
# after epoch 20) are one seed of scripts/study/study.sh's setting: its table is what one seed gives, the study's
# intervals say what that is worth (docs/demo.md, docs/study.md). --device auto uses a GPU when there is one.
# Environment knobs (the test suite shrinks them): DEMO_SIZE, DEMO_EPOCHS, DEMO_SLICES, DEMO_METHOD, DEMO_ACC,
# DEMO_TRAIN_FLAGS (flags of every training run), DEMO_OUT.
# One template brain and 40 epochs: a demonstration of the pipeline, not the paper's benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${DEMO_OUT:-results/demo}
SIZE=${DEMO_SIZE:-32}
EPOCHS=${DEMO_EPOCHS:-40}
# All slices with brain in them by default, as scripts/study/study.sh prepares them (79 / 28 / 28 train / validation /
# test at 32 x 32): the demo is one seed of the study's setting.
SLICES=${DEMO_SLICES:-}
METHOD=${DEMO_METHOD:-at}
PYTHON=${PYTHON:-python}
ACC=${DEMO_ACC:-4x}
DEMO_TRAIN_FLAGS=${DEMO_TRAIN_FLAGS:-}
MAPS=${DEMO_MAPS:-espirit}
USAGE="usage: bash scripts/demo.sh [--overwrite] [--coils N]"

OVERWRITE=
COILS=
while [ $# -gt 0 ]; do
    case "$1" in
        --overwrite) OVERWRITE=1; shift ;;
        --coils)
            if [ $# -lt 2 ] || ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then
                echo "error: --coils needs a number of coils, e.g. --coils 8; $USAGE" >&2
                exit 2
            fi
            COILS=$2; shift 2 ;;
        *) echo "error: unknown argument '$1'; $USAGE" >&2; exit 2 ;;
    esac
done
[ -n "$OVERWRITE" ] && rm -rf "$OUT"
if [ -e "$OUT" ]; then
    echo "error: $OUT already exists; rerun with --overwrite to replace it (or set DEMO_OUT)" >&2
    exit 2
fi
start=$(date +%s)
echo "SFT-KD-Recon demo: MNI152 template, ${SIZE}x${SIZE} slices, ${SLICES:-all} slices, ${EPOCHS} epochs, acc ${ACC}, KD method ${METHOD}${COILS:+, ${COILS} simulated coils (maps: ${MAPS})} -> ${OUT}"

"$PYTHON" -m data.prepare --demo --out-dir "$OUT/data" --size "$SIZE" --resize --acc "$ACC" \
    ${SLICES:+--max-slices-per-volume "$SLICES"} \
    ${COILS:+--synthetic-phase 1 --coils "$COILS" --maps "$MAPS" --center-fraction 0.16}
RESULTS="$OUT/runs" KD_METHODS="$METHOD" TRAIN_FLAGS="--device auto --image-every 2 --lr-step-size 20 $DEMO_TRAIN_FLAGS" \
    bash scripts/train_all.sh "$OUT/data" "$ACC" "$EPOCHS"

RUNS="$OUT/runs/$ACC"
"$PYTHON" evaluate.py --data-root "$OUT/data" --acc "$ACC" --out-dir "$OUT/eval" --save-recons --device auto \
    --checkpoints "$RUNS/teacher/best_model.pt" "$RUNS/student/best_model.pt" "$RUNS/sft/best_model.pt" \
                  "$RUNS/stdkd-$METHOD/best_model.pt" "$RUNS/sftkd-$METHOD/best_model.pt"
"$PYTHON" -m scripts.report --eval-dirs "$OUT/eval" --out-dir "$OUT"
"$PYTHON" -m scripts.figure --eval-dir "$OUT/eval" --data-root "$OUT/data" --acc "$ACC" --out-dir "$OUT" \
    --models teacher student sft "stdkd-$METHOD" "sftkd-$METHOD" --median-of teacher

echo
cat "$OUT/table.md"
echo
echo "demo finished in $(( $(date +%s) - start )) s"
echo "table:       $OUT/table.md"
echo "figure:      $OUT/figure.png"
echo "metrics:     $OUT/eval/metrics.csv"
echo "TensorBoard: tensorboard --logdir $OUT/runs"
