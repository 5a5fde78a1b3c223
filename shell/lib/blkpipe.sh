# shellcheck shell=bash
# blkpipe.sh: helpers shared by the blkpipe workflows (blksync, lvmigrate, lvbackup).
# Sourced, not run. The caller sets PROG (its name, for messages) before sourcing and
# `set -euo pipefail` itself. Installed as /usr/share/blkpipe/blkpipe.sh; from a source tree
# it is shell/lib/blkpipe.sh beside the scripts.

# die_usage MESSAGE: a command-line error, exit 2.
die_usage() {
    printf '%s: %s (see --help)\n' "$PROG" "$*" >&2
    exit 2
}

# die MESSAGE: a failure, exit $DIE_CODE (default 1).
die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit "${DIE_CODE:-1}"
}

# log MESSAGE: one line on stderr.
log() {
    printf '%s: %s\n' "$PROG" "$*" >&2
}

# sq WORD: WORD quoted for a POSIX shell (the remote side).
sq() {
    printf "'%s'" "${1//\'/\'\\\'\'}"
}

# need_tools TOOL...: exit 2 naming every TOOL that is not on the PATH.
need_tools() {
    local tool missing=()
    for tool in "$@"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    ((${#missing[@]} == 0)) || {
        printf '%s: required tool not found on PATH: %s\n' "$PROG" "${missing[*]}" >&2
        exit 2
    }
}

# parse_size OPTION VALUE: VALUE in bytes (K, M, G, T suffixes are powers of 1024).
parse_size() {
    local n shift=0
    [[ "$2" =~ ^([0-9]{1,15})([KMGT]?)i?B?$ ]] || die_usage "$1 wants a size such as 64M, got: $2"
    n="${BASH_REMATCH[1]}"
    case "${BASH_REMATCH[2]}" in
    K) shift=10 ;;
    M) shift=20 ;;
    G) shift=30 ;;
    T) shift=40 ;;
    esac
    printf '%s\n' "$((10#$n << shift))"
}

# now: the time in seconds, with microseconds.
now() {
    printf '%s\n' "$EPOCHREALTIME"
}

# elapsed START [END]: seconds between two `now`s, two decimals.
elapsed() {
    awk -v a="$1" -v b="${2:-$(now)}" 'BEGIN { printf "%.2f", b - a }'
}

# compress: the optional compression stage of a pipeline (zstd when ZSTD=1, else cat).
compress() {
    if ((${ZSTD:-0})); then
        zstd -q -c -3 -T0
    else
        cat
    fi
}

# compressor_name: what `compress` runs, for messages.
compressor_name() {
    if ((${ZSTD:-0})); then echo zstd; else echo cat; fi
}

# on_exit_cleanup FUNCTION [MESSAGE]: run FUNCTION on exit and on INT, TERM and HUP; on a
# signal, log "interrupted by SIGxxx" (and MESSAGE), clean up, then die of that signal.
on_exit_cleanup() {
    BLKPIPE_CLEANUP="$1"
    BLKPIPE_SIGNAL_MESSAGE="${2:-}"
    trap blkpipe_run_cleanup EXIT
    trap 'blkpipe_on_signal INT' INT
    trap 'blkpipe_on_signal TERM' TERM
    trap 'blkpipe_on_signal HUP' HUP
}

# shellcheck disable=SC2317  # called through trap
blkpipe_run_cleanup() {
    trap - EXIT INT TERM HUP
    "$BLKPIPE_CLEANUP"
}

# shellcheck disable=SC2317  # called through trap
blkpipe_on_signal() {
    if [[ -n "$BLKPIPE_SIGNAL_MESSAGE" ]]; then
        log "interrupted by SIG$1; $BLKPIPE_SIGNAL_MESSAGE"
    fi
    blkpipe_run_cleanup
    kill -s "$1" "$$"
}

# pipeline_status NAME... -- STATUS...: for a pipeline whose exit statuses (PIPESTATUS) are
# given after `--`, print "NAME exited N, ..." for the stages that failed and return 1 if any
# did; print nothing and return 0 if all succeeded. A NAME of "-" is a stage not to report.
pipeline_status() {
    local names=() st=() i failed=()
    while (($# > 0)) && [[ "$1" != -- ]]; do
        names+=("$1")
        shift
    done
    shift
    st=("$@")
    for i in "${!st[@]}"; do
        [[ "${names[i]:--}" != - ]] || continue
        ((st[i] == 0)) || failed+=("${names[i]} exited ${st[i]}")
    done
    ((${#failed[@]} > 0)) || return 0
    local msg
    msg="$(printf '%s, ' "${failed[@]}")"
    printf '%s\n' "${msg%, }"
    return 1
}

# list_stopped FILE: for a range list from `blkdiff --list-differing --stop-above`, the
# stop line without its "# " ("stopped at OFFSET: K of N blocks compared differ ...") when
# that pass gave up on scattered changes (the line is then last: docs/FORMAT.md 3.5);
# nothing when it compared the whole device.
list_stopped() {
    tail -n 1 "$1" | sed -n 's/^# \(stopped at [0-9]*: .*\)/\1/p'
}
