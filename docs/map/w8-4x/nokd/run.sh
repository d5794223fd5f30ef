#!/usr/bin/env bash
# Arms N and L of cell w8-4x (docs/map/plan-N-L.md), run on their own before the cell's full command
# (scripts/study/cell.sh w8-4x, which retrains every arm and replaces this folder). Seeds 21-25, the map's setting,
# one thread per seed, on the CPU kind that made the map; what ran, at commit 2eb25a5:
#
#   SEEDS="21 22 23 24 25" ACC=4x KD_METHODS=" " CONTROLS=0 NOKD=1 STUDENT_FLAGS="--width 8" \
#       STUDY_FLAGS="--lr-step-size 20 --augment" THREADS=1 DOCS=results/w8-4x-nokd/docs \
#       bash scripts/study/study.sh results/w8-4x-nokd
#
# (teacher, student and SFT, which N and L need, then N = stdkd-sftinit-none and L = stdkd-none). This script then
# checks the rerun's teacher, student and SFT against the committed cell (reproduced.txt: bit for bit, or the
# cell is not extended) and scores N and L alone on both brains into this folder, where study.sh's report and
# map.py read them with the cell.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
R=${1:-results/w8-4x-nokd}
D=docs/map/w8-4x/nokd
PYTHON=${PYTHON:-python}
"$PYTHON" -m scripts.study.reproduced --committed docs/map/w8-4x --rerun "$R/docs" --partial > "$D/reproduced.txt" \
    || { cat "$D/reproduced.txt"; echo "error: not reproduced; the cell is not extended" >&2; exit 1; }
cat "$D/reproduced.txt"
for seed in 21 22 23 24 25; do
    runs="$R/seed$seed/4x"
    for set in mni152 colin27; do
        data=$R/data
        [ "$set" = colin27 ] && data=$R/data_colin27
        OMP_NUM_THREADS=1 "$PYTHON" evaluate.py --checkpoints "$runs/stdkd-sftinit-none/best_model.pt" \
            "$runs/stdkd-none/best_model.pt" --names "stdkd-sftinit-none-seed$seed" "stdkd-none-seed$seed" \
            --data-root "$data" --split test --test-set "$set" --acc 4x --out-dir "$D/$set/seed$seed" --overwrite \
            --device cpu > "$R/seed$seed/eval_nokd_$set.log" 2>&1
    done
    cp "$runs/times.tsv" "$D/times_seed$seed.tsv"
done
REPORT_ONLY=1 DOCS=docs/map/w8-4x PYTHON="$PYTHON" bash scripts/study/study.sh > /dev/null
MAP_ONLY=1 PYTHON="$PYTHON" bash scripts/study/map.sh > /dev/null
echo "docs/map/w8-4x/table.md and docs/map/map.md rebuilt with N and L"
