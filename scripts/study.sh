#!/usr/bin/env bash
# Does SFT-KD-Recon help? The paper's orderings measured on a CPU in hours: for each seed, teacher, student,
# SFT teacher (the paper's formula and --imitation-weight 0), Std-KD and SFT-KD-Recon per KD method, all
# with the same flags, on the embedded MNI152 brain (no download); then evaluation per seed and one report:
# mean ± std over seeds, per-seed values, per-slice Wilcoxon and over-seeds paired t-tests, and a plot.
# Resumable: re-running skips finished runs and resumes interrupted ones (evaluation and report are redone).
#
#   bash scripts/study.sh [RESULTS]            (default results/study)
#   environment: SEEDS ("1 2 3"), KD_METHODS ("imitation at"; add "fitnet cc fsp sp" for the other paper
#                methods), EPOCHS, SIZE, ACC, STUDY_FLAGS (flags of every training run), TRAIN_FLAGS (more,
#                e.g. "--device cuda"), PREPARE_FLAGS (flags of data/prepare.py --demo), IMITATION0 (1: also
#                the --imitation-weight 0 SFT arm; 0 skips it), JOBS (seeds trained at once, default 2;
#                use JOBS=1 on a GPU)
# The defaults are the setting chosen by measurement (README, "Does it work?"). One template brain is not
# ACDC or MRBrainS: the study shows what the implementation does at CPU scale, not the paper's numbers.
set -euo pipefail
if [ $# -gt 1 ]; then
    echo "error: expected at most one argument, got $#; usage: bash scripts/study.sh [RESULTS]" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
RESULTS=${1:-results/study}
SEEDS=${SEEDS:-1 2 3}
KD_METHODS=${KD_METHODS:-imitation at}
EPOCHS=${EPOCHS:-80}
SIZE=${SIZE:-64}
ACC=${ACC:-4x}
STUDY_FLAGS=${STUDY_FLAGS:---augment}
PREPARE_FLAGS=${PREPARE_FLAGS:-}
IMITATION0=${IMITATION0:-1}
JOBS=${JOBS:-2}
PYTHON=${PYTHON:-python}
DATA="$RESULTS/data"
start=$(date +%s)

if [ ! -f "$DATA/mask_$ACC.npy" ]; then
    rm -rf "$DATA"
    # shellcheck disable=SC2086
    "$PYTHON" data/prepare.py --demo --out-dir "$DATA" --size "$SIZE" --resize --acc "$ACC" $PREPARE_FLAGS
fi

train_seed() {  # all runs of one seed; output in RESULTS/seedN/train.log
    local seed=$1 seed_start
    seed_start=$(date +%s)
    mkdir -p "$RESULTS/seed$seed"
    if RESULTS="$RESULTS/seed$seed" KD_METHODS="$KD_METHODS" SFT_IMITATION0=$IMITATION0 \
        TRAIN_FLAGS="--seed $seed --no-progress $STUDY_FLAGS ${TRAIN_FLAGS:-}" \
        bash scripts/train_all.sh "$DATA" "$ACC" "$EPOCHS" > "$RESULTS/seed$seed/train.log" 2>&1; then
        echo "== seed $seed: trained in $(( $(date +%s) - seed_start )) s (per run: $RESULTS/seed$seed/$ACC/times.tsv)"
    else
        echo "error: seed $seed failed; see $RESULTS/seed$seed/train.log" >&2
        tail -n 5 "$RESULTS/seed$seed/train.log" >&2
        return 1
    fi
}

# Seeds train side by side, JOBS at a time, the cores shared out: on a CPU two one-thread processes get
# more done than one two-thread process (small convolutions do not keep two threads busy).
threads=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))
pids=() failed=0
for seed in $SEEDS; do
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

eval_dirs=()
for seed in $SEEDS; do
    runs="$RESULTS/seed$seed/$ACC"
    names=(teacher student sft)
    [ "$IMITATION0" = 1 ] && names+=(sft0)
    for method in $KD_METHODS; do
        names+=("stdkd-$method" "sftkd-$method")
        [ "$IMITATION0" = 1 ] && names+=("sft0kd-$method")
    done
    checkpoints=() labels=()
    for name in "${names[@]}"; do
        checkpoints+=("$runs/$name/best_model.pt")
        labels+=("$name-seed$seed")
    done
    "$PYTHON" evaluate.py --checkpoints "${checkpoints[@]}" --names "${labels[@]}" --data-root "$DATA" \
        --acc "$ACC" --out-dir "$RESULTS/eval_seed$seed" --overwrite --device auto
    eval_dirs+=("$RESULTS/eval_seed$seed")
done
"$PYTHON" scripts/report.py --eval-dirs "${eval_dirs[@]}" --out-dir "$RESULTS" --overwrite \
    --plot "$RESULTS/study.png"
echo "study finished in $(( $(date +%s) - start )) s: $RESULTS/table.md, $RESULTS/study.png"
