#!/usr/bin/env bash
# One map cell again, with the no-KD arms N and L, Colin27 and (at 4x) imitation: the plan of
# docs/map/plan-N-L.md, one command per cell. Every arm of the cell trains again (the map's checkpoints are not
# committed) on the map's seeds and setting, one thread per seed; then:
#   - the rerun's old arms are checked against the committed per-slice metrics (python -m scripts.study.reproduced);
#   - reproduced bit for bit (the CPU kind that made the map): the cell's folder gets the rerun's evaluation (the
#     old arms identical, N, L, Colin27 and imitation added);
#   - not reproduced on another CPU kind: the cell is new; its folder gets the rerun's evaluation, every arm from
#     this machine (table.md's "Trained on" names it), and rerun.json records the check;
#   - not reproduced on the same CPU kind: the code changed the numbers; nothing is copied, exit 1.
# Then the cell's table.md and the map are rebuilt (REPORT_ONLY / MAP_ONLY) and the command prints the git
# command that commits the cell. It commits nothing itself.
#
#   bash scripts/study/cell.sh CELL [RESULTS]      CELL: w8-4x, w16-4x, w32-4x, w8-8x, w16-8x or w32-8x;
#                                                 runs in RESULTS (default results/cells/CELL), resumable
#   environment: JOBS (seeds trained at once, default 5: the map's one thread each), MAP_DOCS (docs/map),
#                COLIN27 (as study.sh; required: Debian's mricron-data), PYTHON, ALLOW_DIRTY=1 (tests only: skip
#                the check that the code is committed)
# The seeds (21-25), STUDY_FLAGS ("--lr-step-size 20 --augment"), EPOCHS (40) and SIZE (32) are the map's and
# cannot be changed here; KD methods: "at imitation" in the 4x row, "at" in the 8x row.
set -euo pipefail
usage="usage: bash scripts/study/cell.sh CELL [RESULTS] (CELL: w8-4x, w16-4x, w32-4x, w8-8x, w16-8x, w32-8x)"
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "error: expected 1 or 2 arguments, got $#; $usage" >&2
    exit 2
fi
cd "$(dirname "$0")/../.."
CELL=$1
RESULTS=${2:-results/cells/$CELL}
MAP_DOCS=${MAP_DOCS:-docs/map}
PYTHON=${PYTHON:-python}
COLIN27=${COLIN27:-/usr/share/mricron/templates/ch2bet.nii.gz}
case $CELL in
    w8-4x|w16-4x|w32-4x) methods="at imitation" ;;
    w8-8x|w16-8x|w32-8x) methods="at" ;;
    *) echo "error: unknown cell '$CELL'; $usage" >&2; exit 2 ;;
esac
width=${CELL%%-*} width=${width#w} acc=${CELL#*-}
for var in SEEDS STUDY_FLAGS EPOCHS SIZE KD_METHODS STUDENT_FLAGS TEACHER_FLAGS TRAIN_FLAGS PREPARE_FLAGS; do
    if [ -n "${!var:-}" ]; then
        echo "error: $var is set; a cell of the map runs in the map's own setting: unset $var" >&2
        exit 2
    fi
done
if [ ! -d "$MAP_DOCS/$CELL/mni152" ]; then
    echo "error: $MAP_DOCS/$CELL/mni152 does not exist; run from a checkout that holds the committed map" >&2
    exit 2
fi
if [ ! -f "$COLIN27" ]; then
    echo "error: $COLIN27 is not installed; the plan scores every arm on Colin27 too: apt-get install mricron-data" \
        "(or set COLIN27 to its ch2bet.nii.gz)" >&2
    exit 2
fi
# From a fixed worktree: every run records this commit, and uncommitted code would make it a lie.
if [ "${ALLOW_DIRTY:-0}" != 1 ] && { ! git diff --quiet HEAD -- . ':(exclude)docs' \
    || ! git diff --cached --quiet -- . ':(exclude)docs'; }; then
    echo "error: the worktree has uncommitted changes outside docs/; commit or stash them, then rerun" >&2
    exit 2
fi
commit=$(git rev-parse --short HEAD)
scratch="$RESULTS/docs"

echo "== cell $CELL at commit $commit: every arm, seeds 21-25, KD methods: $methods, with N, L and Colin27"
# map.sh runs the cell (study.sh with the map's seeds and setting) into a scratch MAP_DOCS; one thread per seed.
NOKD=1 CONTROLS=1 KD_METHODS="$methods" WIDTHS="$width" ACCS="$acc" MAP_DOCS="$scratch" THREADS=1 \
    JOBS=${JOBS:-5} COLIN27="$COLIN27" PYTHON="$PYTHON" bash scripts/study/map.sh "$RESULTS/runs"

check="$RESULTS/reproduced.txt"
status=0
"$PYTHON" -m scripts.study.reproduced --committed "$MAP_DOCS/$CELL" --rerun "$scratch/$CELL" > "$check" || status=$?
cat "$check"
if [ "$status" -ne 0 ] && grep -q "the CPU kind is the same" "$check"; then
    echo "error: on the CPU kind that made the map the old arms must reproduce; they do not, so the code changed" \
        "their numbers since the map. Nothing was copied into $MAP_DOCS/$CELL" >&2
    exit 1
fi
[ "$status" -le 1 ] || exit "$status"

# The rerun's evaluation replaces the cell's: every seed of both test sets and its times; arms evaluated apart
# before (nokd/: N and L run alone) are in the rerun too, from this one machine.
rm -rf "${MAP_DOCS:?}/$CELL/nokd"
for set in mni152 colin27; do
    for dir in "$scratch/$CELL/$set"/seed*; do
        [ -d "$dir" ] || continue
        mkdir -p "$MAP_DOCS/$CELL/$set"
        rm -rf "$MAP_DOCS/$CELL/$set/$(basename "$dir")"
        cp -r "$dir" "$MAP_DOCS/$CELL/$set/"
    done
done
cp "$scratch/$CELL"/times_seed*.tsv "$MAP_DOCS/$CELL/"
reproduced=false
[ "$status" -eq 0 ] && reproduced=true
# Which machine made the cell and whether its old arms reproduced: the map page cites this record.
"$PYTHON" - "$MAP_DOCS/$CELL/rerun.json" "$commit" "$reproduced" "$methods" "$check" <<'PY'
import json, sys
from datetime import datetime, timezone
path, commit, reproduced, methods, check = sys.argv[1:]
lines = open(check).read().splitlines()
trained_on = next((line.split(": ", 1)[1] for line in lines if line.startswith("rerun trained on: ")), "not recorded")
record = {"plan": "docs/map/plan-N-L.md", "commit": commit, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
          "trained_on": trained_on, "old_arms_reproduced": reproduced == "true", "kd_methods": methods.split(),
          "check": lines}
open(path, "w").write(json.dumps(record, indent=1) + "\n")
PY
REPORT_ONLY=1 DOCS="$MAP_DOCS/$CELL" PYTHON="$PYTHON" bash scripts/study/study.sh > /dev/null
MAP_ONLY=1 MAP_DOCS="$MAP_DOCS" PYTHON="$PYTHON" bash scripts/study/map.sh > /dev/null
if [ "$reproduced" = true ]; then
    what="old arms reproduced bit for bit"
else
    what="new cell: the CPU kind differs from the map's, every arm from this machine"
fi
echo "== cell $CELL done ($what); $MAP_DOCS/$CELL/table.md. To commit it:"
echo "   git add $MAP_DOCS/$CELL $MAP_DOCS/map.md $MAP_DOCS/map.png $MAP_DOCS/colin27 && git commit -m \"map cell $CELL with arms N and L," \
    "Colin27$( [ "$acc" = 4x ] && echo ", imitation") (plan docs/map/plan-N-L.md; $what; at $commit) (issue 39)\""
