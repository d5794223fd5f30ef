#!/usr/bin/env bash
# Where does a student-friendly teacher help? The study of scripts/study/study.sh repeated over a map of cells, one
# cell = one student width x one acceleration, each cell's evaluation in docs/map/<cell>/ (cell "w8-4x": student
# width 8, 4x), then the two heatmaps of scripts/study/map.py (teacher - student, and B - C with its interval).
#
#   bash scripts/study/map.sh [RESULTS]     every cell (RESULTS, default results/map: RESULTS/<cell>/ as study.sh's)
#   environment: WIDTHS (student widths, "8 16 32"), ACCS ("4x 8x"), SEEDS (the map's own, "21 22 23 24 25":
#                never the study's 11-15 nor those that chose the setting), KD_METHODS ("at"), MAP_DOCS
#                (docs/map), COMMIT=1 (git-commit each finished cell's folder on its own, so cells run at
#                different times or on different machines add up), STUDY_FLAGS (default: the map's setting,
#                chosen in docs/setting, "--lr-step-size 20 --augment"; study.sh's own default lacks --augment,
#                so a cell run through study.sh alone would not be a cell of this map), and every other variable
#                of scripts/study/study.sh (EPOCHS, SIZE, TRAIN_FLAGS, PREPARE_FLAGS, TEACHER_FLAGS, JOBS, NOKD, ...),
#                the same for every cell; STUDENT_FLAGS and ACC are the cell's. One committed cell again with the
#                no-KD arms N and L: scripts/study/cell.sh (docs/map/plan-N-L.md).
# Resumable: study.sh skips finished runs and evaluations, so re-running continues the first unfinished cell;
# a cell whose every seed is evaluated is not touched. MAP_ONLY=1 only redraws the heatmaps from MAP_DOCS (and, once a
# cell has scored Colin27, those of the second brain in MAP_DOCS/colin27).
set -euo pipefail
if [ $# -gt 1 ]; then
    echo "error: expected at most one argument, got $#; usage: bash scripts/study/map.sh [RESULTS]" >&2
    exit 2
fi
cd "$(dirname "$0")/../.."
RESULTS=${1:-results/map}
WIDTHS=${WIDTHS:-8 16 32}
ACCS=${ACCS:-4x 8x}
SEEDS=${SEEDS:-21 22 23 24 25}
MAP_DOCS=${MAP_DOCS:-docs/map}
PYTHON=${PYTHON:-python}
STUDY_FLAGS=${STUDY_FLAGS:---lr-step-size 20 --augment}
export SEEDS KD_METHODS=${KD_METHODS:-at} STUDY_FLAGS
for seed in $SEEDS; do
    case " 11 12 13 14 15 " in *" $seed "*)
        echo "error: SEEDS has $seed, a seed of the study (11-15); the map needs seeds of its own" >&2
        exit 2 ;;
    esac
done
if [ -n "${STUDENT_FLAGS:-}" ]; then
    echo "error: the map sets the student's width per cell (WIDTHS); unset STUDENT_FLAGS" >&2
    exit 2
fi

cell_done() {  # cell_done DOCS: every seed evaluated on the MNI152 test block
    local seed
    for seed in $SEEDS; do
        [ -f "$1/mni152/seed$seed/summary.json" ] || return 1
    done
}

if [ "${MAP_ONLY:-0}" != 1 ]; then
    for acc in $ACCS; do
        for width in $WIDTHS; do
            cell="w$width-$acc"
            if cell_done "$MAP_DOCS/$cell"; then
                echo "== cell $cell: done ($MAP_DOCS/$cell)"
                continue
            fi
            echo "== cell $cell: student width $width, $acc"
            ACC=$acc STUDENT_FLAGS="--width $width" DOCS="$MAP_DOCS/$cell" bash scripts/study/study.sh "$RESULTS/$cell"
            if [ "${COMMIT:-0}" = 1 ]; then
                git add -- "$MAP_DOCS/$cell"
                git commit -q -m "map cell $cell (student width $width, $acc, seeds $SEEDS): $MAP_DOCS/$cell" \
                    -- "$MAP_DOCS/$cell"
            fi
        done
    done
fi
"$PYTHON" -m scripts.study.map --map-dir "$MAP_DOCS" --out-dir "$MAP_DOCS" --overwrite --kd-method "${KD_METHODS%% *}"
# The second brain's map (MAP_DOCS/colin27/map.{png,md}) once some cell has scored Colin27 (docs/map/plan-N-L.md).
if compgen -G "$MAP_DOCS/*/colin27/seed*/summary.json" > /dev/null; then
    "$PYTHON" -m scripts.study.map --map-dir "$MAP_DOCS" --test-set colin27 --out-dir "$MAP_DOCS/colin27" --overwrite \
        --kd-method "${KD_METHODS%% *}"
fi
