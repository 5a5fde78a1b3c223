# shellcheck shell=bash
# Runs test jobs a few at a time with each job's output kept apart. Sourced by tests/run-all
# and tests/vm/run-tests, not executed.
#
#   jobs_run N LOGDIR NAME=COMMAND...
#
# Starts the jobs in the order given (put the longest first), at most N at once. Each runs
# `bash -c COMMAND` with its output (stdout and stderr) in LOGDIR/NAME.log (a / in NAME as _);
# when a job ends its whole log is printed between "== NAME" and "== NAME: PASS (N s)" or
# "FAIL (exit E, N s)" lines, so the logs of jobs that ran side by side never interleave.
# Returns 0 if every job passed, else 1 after a line naming the failed ones. JOBS_TIMES (an
# array) gets one "SECONDS NAME" entry per job, for a summary.

JOBS_TIMES=()

jobs_run() {
    local max="$1" logdir="$2"
    shift 2
    local queue=("$@") failed=() spec name pid rc t
    local -A name_of=() start_of=()
    _jobs_log() { printf '%s/%s.log' "$logdir" "${1//\//_}"; }
    mkdir -p "$logdir"
    while ((${#queue[@]} > 0 || ${#name_of[@]} > 0)); do
        while ((${#queue[@]} > 0 && ${#name_of[@]} < max)); do
            spec="${queue[0]}"
            queue=("${queue[@]:1}")
            name="${spec%%=*}"
            printf '== %s: started [%s]\n' "$name" "$(date +%T)"
            bash -c "${spec#*=}" >"$(_jobs_log "$name")" 2>&1 </dev/null &
            name_of[$!]="$name"
            start_of[$!]=$SECONDS
        done
        rc=0
        wait -n -p pid "${!name_of[@]}" || rc=$?
        name="${name_of[$pid]}"
        t=$((SECONDS - start_of[$pid]))
        unset "name_of[$pid]" "start_of[$pid]"
        JOBS_TIMES+=("$t $name")
        printf '\n== %s\n' "$name"
        cat "$(_jobs_log "$name")"
        if ((rc == 0)); then
            printf '== %s: PASS (%d s)\n' "$name" "$t"
        else
            printf '== %s: FAIL (exit %d, %d s)\n' "$name" "$rc" "$t"
            failed+=("$name")
        fi
    done
    if ((${#failed[@]} > 0)); then
        echo "failed: ${failed[*]}" >&2
        return 1
    fi
}
