#!/usr/bin/env bash
# The paper's protocol for one data set and acceleration: teacher, student, SFT teacher, then Std-KD and
# SFT-KD-Recon for each KD method, each in its own experiment folder under one results root.
# Re-running skips finished runs and resumes interrupted ones.
#
#   bash scripts/train_all.sh DATA_ROOT ACC [EPOCHS]
#   environment: RESULTS (default results/<data folder name>), KD_METHODS (default "at fitnet cc fsp sp"),
#                TRAIN_FLAGS (extra flags for every training run, e.g. "--device cuda --num-workers 4"),
#                SFT_IMITATION0=1 (also an SFT teacher with --imitation-weight 0, "sft0", and its students
#                "sft0kd-<method>": the public code's imitation term is ~0, so users ask which one to use),
#                CONTROLS=1 (also the arms that separate SFT's teacher from SFT's initialisation: the standard
#                teacher with SFT's blocks, "stdkd-sftinit-<method>", and with the standalone student's
#                cascades, "stdkd-studentinit-<method>"), NOKD=1 (also the no-KD arms, once whatever KD_METHODS
#                holds: N, the SFT blocks fine-tuned with L1 alone, "stdkd-sftinit-none", and L, the student alone
#                for EPOCHS + KD_EPOCHS epochs with the StepLR step of TRAIN_FLAGS / KD_FLAGS scaled alike,
#                "stdkd-none"; KD_METHODS itself may not hold none)
#                SFT_FLAGS / KD_FLAGS (extra flags for the SFT runs / the KD runs only), KD_EPOCHS (--epochs of
#                each KD run; default EPOCHS; scripts/paper.sh doubles it for the two-stage schedule),
#                STUDENT_FLAGS / TEACHER_FLAGS (the size of the student-side / teacher-side networks, --width N
#                and --depth N: the student run, the SFT run's student side (as --student-width ...) and every
#                KD student / the teacher run and the SFT run's teacher side; every run records them in its
#                roles), CHECK_ONLY=1 (only check these flags, run nothing)
# Each run's wall time is printed and recorded in RESULTS/ACC/times.tsv, one row per run (run, seconds,
# trained|resumed|skipped): a rerun replaces the run's row, except that a run found finished ("skipped") keeps the
# row of the invocation that trained it (a row "skipped" only where none exists).
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "error: expected 2 or 3 arguments, got $#; usage: bash scripts/train_all.sh DATA_ROOT ACC [EPOCHS]" \
        "(e.g. data/mrbrains 4x 150)" >&2
    exit 2
fi
DATA_ROOT=$1 ACC=$2 EPOCHS=${3:-150}
RUN_EPOCHS=$EPOCHS  # of the run() calls below; the KD runs may get KD_EPOCHS
RESULTS=${RESULTS:-results/$(basename "$DATA_ROOT")}
KD_METHODS=${KD_METHODS-at fitnet cc fsp sp}  # set but empty: the base runs only
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT="$RESULTS/$ACC"

side_flags() {  # side_flags VAR PREFIX: VAR's --width / --depth, each as --PREFIXwidth N; anything else an error
    local var=$1 prefix=$2 words
    read -r -a words <<< "${!var:-}"
    local i=0 out=()
    while [ $i -lt ${#words[@]} ]; do
        case ${words[$i]} in
            --width|--depth)
                if [ $((i + 1)) -ge ${#words[@]} ]; then
                    echo "error: $var ends with ${words[$i]} without a value; give e.g. $var=\"--width 8\"" >&2
                    exit 2
                fi
                out+=("--$prefix${words[$i]#--}" "${words[$((i + 1))]}")
                i=$((i + 2)) ;;
            *)
                echo "error: $var takes only --width N and --depth N (the size of one side's networks), got" \
                    "'${words[$i]}'; put other flags in TRAIN_FLAGS" >&2
                exit 2 ;;
        esac
    done
    echo "${out[@]}"
}
# Checked before any run: a typo must not leave half a study trained at the wrong size.
student_flags=$(side_flags STUDENT_FLAGS "")
teacher_flags=$(side_flags TEACHER_FLAGS "")
sft_flags="$(side_flags STUDENT_FLAGS student-) $(side_flags TEACHER_FLAGS teacher-)"

last_value() {  # last_value FLAG WORDS...: the value of the last FLAG N / FLAG=N among WORDS, else nothing
    local flag=$1 value="" previous=""; shift
    for word in "$@"; do
        [ "$previous" = "$flag" ] && value=$word
        case $word in "$flag="*) value=${word#*=} ;; esac
        previous=$word
    done
    echo "$value"
}
# The KD arms and their flags come from the arm registry (scripts/study/arms.py), read before any run: a KD
# method that is not the study's (none is the no-KD arms' own) stops everything here.
groups=(paper)
[ "${CONTROLS:-0}" = 1 ] && groups+=(controls)
[ "${SFT_IMITATION0:-0}" = 1 ] && groups+=(imitation0)
[ "${NOKD:-0}" = 1 ] && groups+=(nokd)
# shellcheck disable=SC2086
lr_step=$(last_value --lr-step-size ${TRAIN_FLAGS:-} ${KD_FLAGS:-})
read -r -a methods <<< "$KD_METHODS"
arm_flags=(--groups "${groups[@]}" --method "${methods[@]}" --runs-dir "$OUT" --pretrain-epochs "$EPOCHS"
           --epochs "${KD_EPOCHS:-$EPOCHS}")
[ -n "$lr_step" ] && arm_flags+=(--lr-step-size "$lr_step")
arms=()
if [ ${#methods[@]} -gt 0 ] || [ "${NOKD:-0}" = 1 ]; then  # KD_METHODS="" and no NOKD: the base runs only
    # Read every line first: a run must not inherit (and read) the list on its standard input.
    mapfile -t arms < <("$PYTHON" -m scripts.study.arms runs "${arm_flags[@]}" || echo "arms-failed")
    if [ ${#arms[@]} -eq 0 ] || [ "${arms[-1]}" = arms-failed ]; then
        echo "error: python -m scripts.study.arms listed no KD arm (see its error above)" >&2
        exit 2
    fi
fi
[ "${CHECK_ONLY:-0}" = 1 ] && exit 0

run() {  # run NAME SCRIPT ARGS...: fresh, resumed or skipped depending on what NAME's folder holds
    local name=$1 script=$2; shift 2
    local exp="$OUT/$name" resume=()
    if [ -f "$exp/model.pt" ]; then
        resume=(--resume)
    elif [ -e "$exp" ]; then
        # Killed before its first checkpoint: only config.json / summary exist, so start it again.
        resume=(--overwrite)
    fi
    echo "== $name ($script) -> $exp"
    local start how=trained output rc=0
    start=$(date +%s)
    [ ${#resume[@]} -gt 0 ] && [ "${resume[0]}" = --resume ] && how=resumed
    mkdir -p "$OUT"
    output=$(mktemp "$OUT/.run-output.XXXXXX")
    # shellcheck disable=SC2086
    "$PYTHON" "$script" --data-root "$DATA_ROOT" --acc "$ACC" --epochs "$RUN_EPOCHS" --exp-dir "$exp" \
        "${resume[@]}" ${TRAIN_FLAGS:-} "$@" | tee "$output" || rc=$?
    [ $rc -eq 0 ] || { rm -f "$output"; exit $rc; }
    local seconds=$(( $(date +%s) - start ))
    # The loop's own words for a run that had nothing left to do (models/training/loop.py).
    grep -q "nothing to resume" "$output" && how=skipped
    rm -f "$output"
    echo "== $name $how in ${seconds} s"
    log_time "$name" "$seconds" "$how"
}

log_time() {  # log_time NAME SECONDS OUTCOME: NAME's one row of times.tsv, replaced atomically
    local file="$OUT/times.tsv" tmp
    if [ "$3" = skipped ] && [ -f "$file" ] && awk -F'\t' -v n="$1" '$1 == n {f = 1} END {exit !f}' "$file"; then
        return
    fi
    tmp=$(mktemp "$OUT/.times.XXXXXX")
    [ -f "$file" ] && awk -F'\t' -v n="$1" '$1 != n' "$file" > "$tmp"
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$tmp"
    mv -f "$tmp" "$file"
}

# shellcheck disable=SC2086
run teacher train_teacher.py --model teacher $teacher_flags
# shellcheck disable=SC2086
run student train_teacher.py --model student $student_flags
# shellcheck disable=SC2086
run sft train_sft.py $sft_flags ${SFT_FLAGS:-}
if [ "${SFT_IMITATION0:-0}" = 1 ]; then
    # shellcheck disable=SC2086
    run sft0 train_sft.py $sft_flags ${SFT_FLAGS:-} --imitation-weight 0
fi
RUN_EPOCHS=${KD_EPOCHS:-$EPOCHS}
for line in "${arms[@]+"${arms[@]}"}"; do
    IFS=$'\t' read -r -a fields <<< "$line"
    # The arm's own flags come after TRAIN_FLAGS, so L's --epochs / --lr-step-size win.
    # shellcheck disable=SC2086
    run "${fields[0]}" train_student_kd.py $student_flags ${KD_FLAGS:-} "${fields[@]:1}"
done
echo "all runs for $ACC are in $OUT"
