#!/usr/bin/env bash
# Does SFT-KD-Recon help, and is it the teacher? A controlled, replicated study on the embedded MNI152 brain
# (no download), scored on held-out test data that chose nothing.
#
# Per seed: teacher, student, SFT teacher, and per KD method the four students of the arm registry's paper and
# controls groups (models/distill/arms.py), which cross teacher and init:
#   A  stdkd-M              standard teacher, student from scratch          (Std-KD)
#   B  sftkd-M              SFT teacher, S2..S5 from the SFT run             (SFT-KD-Recon)
#   C  stdkd-sftinit-M      standard teacher, S2..S5 from the SFT run        (SFT's blocks without its teacher)
#   D  stdkd-studentinit-M  standard teacher, S2..S5 from the student run    (ordinary pre-training)
# Primary contrast B - C (the teacher's effect, initialisation fixed); secondary C - A, C - D, B - A.
# best_model.pt is chosen on validation; every model is scored on the test block of the MNI152 brain and,
# when Debian's mricron-data is installed, on a second brain (Colin27, ch2bet.nii.gz) prepared with the same
# geometry and masks. Each seed's evaluation goes to DOCS/{mni152,colin27}/seedN (small CSV + JSON files meant
# to be committed), so a study continues on another machine and the table is rebuilt from committed data:
#
#   bash scripts/study.sh [RESULTS]            runs (RESULTS, default results/study), evaluation, report
#   REPORT_ONLY=1 bash scripts/study.sh        only the report, from DOCS: DOCS/table.md, DOCS/study.png
#   environment: SEEDS ("11 12 13 14 15"), KD_METHODS ("at imitation"), EPOCHS (40), SIZE (32), ACC (4x),
#                STUDY_FLAGS (flags of every training run, "--lr-step-size 20"), TRAIN_FLAGS (more, e.g.
#                "--device cuda"), PREPARE_FLAGS (flags of data/prepare.py --demo), JOBS (seeds trained at
#                once, default: all of them, one thread each; JOBS=1 on a GPU), THREADS (per seed, default: the
#                cores shared out over JOBS), DOCS (docs/study),
#                COLIN27 (path of ch2bet.nii.gz, default /usr/share/mricron/templates/ch2bet.nii.gz),
#                CONTROLS (1: the arms C and E too, the default; 0: teacher, student, SFT, A and B only, e.g.
#                PREPARE_FLAGS="--synthetic-phase 7" DOCS=docs/synthetic-phase/phase for docs/synthetic-phase),
#                STUDENT_FLAGS / TEACHER_FLAGS (e.g. "--width 8": the size of the student-side networks (the
#                student, the SFT run's student side, every KD student) / of the teacher-side ones (the teacher,
#                the SFT run's teacher side); --width N and --depth N, see scripts/train_all.sh)
# The defaults are the demo's setting (scripts/demo.sh); the seeds were fixed before any run of this study and
# differ from those used to choose the setting (42, 1, 2, 3). Resumable: re-running skips finished runs,
# resumes interrupted ones, and re-evaluates only seeds whose evaluation is missing.
set -euo pipefail
if [ $# -gt 1 ]; then
    echo "error: expected at most one argument, got $#; usage: bash scripts/study.sh [RESULTS]" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
RESULTS=${1:-results/study}
SEEDS=${SEEDS:-11 12 13 14 15}
KD_METHODS=${KD_METHODS:-at imitation}
EPOCHS=${EPOCHS:-40}
SIZE=${SIZE:-32}
ACC=${ACC:-4x}
STUDY_FLAGS=${STUDY_FLAGS:---lr-step-size 20}
PREPARE_FLAGS=${PREPARE_FLAGS:-}
read -r -a seed_list <<< "$SEEDS"
JOBS=${JOBS:-${#seed_list[@]}}
DOCS=${DOCS:-docs/study}
COLIN27=${COLIN27:-/usr/share/mricron/templates/ch2bet.nii.gz}
PYTHON=${PYTHON:-python}
CONTROLS=${CONTROLS:-1}
DATA="$RESULTS/data"
COLIN_DATA="$RESULTS/data_colin27"
start=$(date +%s)

report() {
    local dirs=()
    for set in mni152 colin27; do
        for dir in "$DOCS/$set"/seed*; do
            [ -f "$dir/summary.json" ] && dirs+=("$dir")
        done
    done
    if [ ${#dirs[@]} -eq 0 ]; then
        echo "error: no evaluation under $DOCS/{mni152,colin27}/seed*; run bash scripts/study.sh first" >&2
        exit 2
    fi
    # The committed studies' checkpoints record no machine: DOCS/machine.json names it.
    local machine=() contrasts=(--contrasts)
    [ -f "$DOCS/machine.json" ] && machine=(--machine "$DOCS/machine.json")
    [ "$CONTROLS" = 1 ] || contrasts=()
    "$PYTHON" -m scripts.report --eval-dirs "${dirs[@]}" --out-dir "$DOCS" --overwrite --plot "$DOCS/study.png" \
        "${contrasts[@]}" "${machine[@]}"
}
if [ "${REPORT_ONLY:-0}" = 1 ]; then
    report
    exit 0
fi

CHECK_ONLY=1 bash scripts/train_all.sh "$DATA" "$ACC"  # STUDENT_FLAGS / TEACHER_FLAGS, before anything is written
if [ ! -f "$DATA/mask_$ACC.npy" ]; then
    rm -rf "$DATA"
    # shellcheck disable=SC2086
    "$PYTHON" -m data.prepare --demo --out-dir "$DATA" --size "$SIZE" --resize --acc "$ACC" $PREPARE_FLAGS
fi
if [ -f "$COLIN27" ] && [ ! -f "$COLIN_DATA/mask_$ACC.npy" ]; then
    rm -rf "$COLIN_DATA"
    # The MNI152 demo pads its 197 x 233 slices to 233 x 233 before resizing: the same mm per pixel here.
    # shellcheck disable=SC2086
    "$PYTHON" -m data.prepare --input "$COLIN27" --test-only --mask-dir "$DATA" --out-dir "$COLIN_DATA" \
        --size "$SIZE" --resize --pad-to 233 --acc "$ACC" $PREPARE_FLAGS
elif [ ! -f "$COLIN27" ]; then
    echo "note: $COLIN27 is not installed (Debian: apt-get install mricron-data); the study skips the Colin27 test set"
fi

names=(teacher student sft)
groups=(paper)
[ "$CONTROLS" = 1 ] && groups+=(controls)
for method in $KD_METHODS; do
    mapfile -t -O "${#names[@]}" names < <("$PYTHON" -m models.distill.arms names --groups "${groups[@]}" \
        --method "$method")
done

evaluate_seed() {  # evaluate_seed SEED: every model of the seed on each test set, into DOCS
    local seed=$1 runs="$RESULTS/seed$1/$ACC" checkpoints=() labels=()
    for name in "${names[@]}"; do
        checkpoints+=("$runs/$name/best_model.pt")
        labels+=("$name-seed$seed")
    done
    for set in mni152 colin27; do
        local data=$DATA
        [ "$set" = colin27 ] && data=$COLIN_DATA
        [ -d "$data/test" ] || continue
        [ -f "$DOCS/$set/seed$seed/summary.json" ] && continue
        "$PYTHON" evaluate.py --checkpoints "${checkpoints[@]}" --names "${labels[@]}" --data-root "$data" \
            --split test --test-set "$set" --acc "$ACC" --out-dir "$DOCS/$set/seed$seed" --overwrite \
            --device auto > "$RESULTS/seed$seed/eval_$set.log" 2>&1
    done
    # Whole or not at all: a copy cut short by a full disk must not stand in for the seed's timings.
    cp "$runs/times.tsv" "$DOCS/.times_seed$seed.tsv.tmp"
    mv -f "$DOCS/.times_seed$seed.tsv.tmp" "$DOCS/times_seed$seed.tsv"
}

train_seed() {  # all runs of one seed (output in RESULTS/seedN/train.log), then its evaluation
    local seed=$1 seed_start
    seed_start=$(date +%s)
    mkdir -p "$RESULTS/seed$seed"
    if RESULTS="$RESULTS/seed$seed" KD_METHODS="$KD_METHODS" CONTROLS="$CONTROLS" \
        TRAIN_FLAGS="--seed $seed --no-progress $STUDY_FLAGS ${TRAIN_FLAGS:-}" \
        bash scripts/train_all.sh "$DATA" "$ACC" "$EPOCHS" > "$RESULTS/seed$seed/train.log" 2>&1 \
        && evaluate_seed "$seed"; then
        echo "== seed $seed: trained and evaluated in $(( $(date +%s) - seed_start )) s ($DOCS/*/seed$seed)"
    else
        echo "error: seed $seed failed; see $RESULTS/seed$seed/train.log" >&2
        tail -n 5 "$RESULTS/seed$seed/train.log" >&2
        return 1
    fi
}

# Seeds train side by side, JOBS at a time, the cores shared out: on a CPU several one-thread processes get
# more done than one multi-thread process (small convolutions do not keep two threads busy).
threads=${THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
pids=() failed=0
for seed in "${seed_list[@]}"; do
    if [ ${#pids[@]} -ge "$JOBS" ]; then
        wait "${pids[0]}" || failed=1
        pids=("${pids[@]:1}")
    fi
    OMP_NUM_THREADS=$threads train_seed "$seed" &
    pids+=($!)
done
for pid in "${pids[@]}"; do
    wait "$pid" || failed=1
done
[ "$failed" = 0 ] || exit 1
report
echo "study finished in $(( $(date +%s) - start )) s: $DOCS/table.md, $DOCS/study.png"
