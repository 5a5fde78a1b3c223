# shellcheck shell=bash
# Shared helpers for the blkpipe qemu VM harness. Sourced, not executed.

vm_die() {
    printf '%s: error: %s\n' "${0##*/}" "$*" >&2
    exit 2
}

vm_log() {
    printf '%s: [%s] %s\n' "${0##*/}" "$(date +%T)" "$*" >&2
}

# Default cache directory (downloads, unpacked packages, built initramfs).
vm_cache_dir() {
    printf '%s\n' "${BLKPIPE_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/blkpipe-vm}"
}

# Run a command as root (directly, or through sudo when available).
vm_as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        vm_die "need root to run: $*"
    fi
}

# Make sure the Debian packages providing the given commands are installed.
# Arguments are pairs: COMMAND PACKAGE.
vm_need_host_tools() {
    local missing=() cmd pkg
    while (($# >= 2)); do
        cmd="$1" pkg="$2"
        shift 2
        if ! command -v "$cmd" >/dev/null 2>&1; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} > 0)); then
        vm_log "installing host packages: ${missing[*]}"
        vm_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-remove "${missing[@]}" >&2 ||
            {
                vm_as_root apt-get update -q >&2
                vm_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-remove "${missing[@]}" >&2
            }
    fi
}

# Library directories searched for DT_NEEDED entries, in order, relative to a
# root directory ("" for the host).
VM_LIBDIRS=(
    lib/x86_64-linux-gnu
    usr/lib/x86_64-linux-gnu
    lib64
    usr/lib64
    lib
    usr/lib
)

# vm_find_lib ROOT NAME: print the path (relative to ROOT, or absolute on the
# host if ROOT is "/") of shared library NAME, or nothing.
vm_find_lib() {
    local root="$1" name="$2" d
    for d in "${VM_LIBDIRS[@]}"; do
        if [[ -e "$root/$d/$name" ]]; then
            printf '%s\n' "$d/$name"
            return 0
        fi
    done
    return 1
}

# vm_is_dynamic_elf FILE: true if FILE is an ELF object with a dynamic section.
vm_is_dynamic_elf() {
    local magic
    [[ -f "$1" && -r "$1" ]] || return 1
    magic="$(head -c 4 "$1" | od -An -c | tr -d ' ')"
    [[ "$magic" == '177ELF' ]] || return 1
    readelf -d "$1" 2>/dev/null | grep -q '(NEEDED)'
}

# vm_needed FILE: print the DT_NEEDED names of FILE (plus the interpreter
# basename if it has one).
vm_needed() {
    readelf -d "$1" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'
    readelf -l "$1" 2>/dev/null | sed -n 's/.*\[Requesting program interpreter: \(.*\)\]$/\1/p' |
        sed 's#.*/##'
}

# vm_resolve_libs ROOT FILE...: for the ELF files given, print (one per line,
# as "SRC<TAB>DEST") the shared libraries that are missing from ROOT and must
# be copied from the host. DEST is relative to the guest root. Libraries
# already present under ROOT are used for the recursion but not printed.
vm_resolve_libs() {
    local root="$1"
    shift
    local -A seen=()
    local queue=("$@") f name rel
    while ((${#queue[@]} > 0)); do
        f="${queue[0]}"
        queue=("${queue[@]:1}")
        vm_is_dynamic_elf "$f" || continue
        while IFS= read -r name; do
            [[ -n "$name" ]] || continue
            [[ -z "${seen[$name]:-}" ]] || continue
            seen[$name]=1
            if rel="$(vm_find_lib "$root" "$name")"; then
                queue+=("$root/$rel")
            elif rel="$(vm_find_lib "" "$name")"; then
                # Host copy; keep the same path in the guest.
                printf '%s\t%s\n' "$(readlink -f "/$rel")" "$rel"
                queue+=("/$rel")
            else
                vm_die "shared library $name (needed by $f) not found in $root or on the host"
            fi
        done < <(vm_needed "$f")
    done
}

# vm_test_start NAME OUTDIR TOOL...: the start every tests/vm test script shares. Sets
# `here` (the checkout), `bin` (the release binaries: $BLKPIPE_BIN, else the TOOLs built
# now; vm_test_run adds them to the VM), `work` (a new temporary directory, removed on exit;
# a script with more to clean up sets its own EXIT trap and removes it there) and `outdir`
# (OUTDIR, or $work/out when OUTDIR is empty; created).
vm_test_start() {
    local name="$1" out="$2" t build=()
    shift 2
    VM_TEST_TOOLS=("$@")
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    if [[ -n "${BLKPIPE_BIN:-}" ]]; then
        bin="$BLKPIPE_BIN"
    else
        for t in "$@"; do build+=(--bin "$t"); done
        (cd "$here" && cargo build --release -q "${build[@]}")
        bin="$here/target/release"
    fi
    work=$(mktemp -d "${TMPDIR:-/tmp}/blkpipe-$name.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    outdir="${out:-$work/out}"
    mkdir -p "$outdir"
}

# vm_test_guest NAME < BODY: write $work/guest.sh, the guest side of test NAME: a bash
# script (set -euo pipefail) that sources /vm/guest-lib.sh, runs BODY with VM_TEST=NAME
# (for vm_check) and exits non-zero if any vm_check failed.
vm_test_guest() {
    {
        printf '#!/bin/bash\nset -euo pipefail\n. /vm/guest-lib.sh\nVM_TEST=%s\n' "$1"
        cat
        # shellcheck disable=SC2016  # expanded in the guest
        printf 'exit "$VM_FAILED"\n'
    } >"$work/guest.sh"
    chmod +x "$work/guest.sh"
}

# vm_test_run NAME RUN-IN-VM-OPTION...: run $work/guest.sh in the VM (tests/vm/run-in-vm,
# console log $outdir/console.log) with vm_test_start's TOOLs, print the guest's "NAME: "
# lines, then "NAME: PASS", or "NAME: FAILED" and exit 1.
vm_test_run() {
    local name="$1" rc=0 t add=()
    shift
    for t in "${VM_TEST_TOOLS[@]}"; do add+=(--add "$bin/$t"); done
    "$here/tests/vm/run-in-vm" --quiet --log "$outdir/console.log" "${add[@]}" "$@" \
        "$work/guest.sh" "$outdir" || rc=$?
    grep -E "^$name: " "$outdir/console.log" || true
    if [[ "$rc" -ne 0 ]]; then
        echo "$name: FAILED (exit $rc; console log: $outdir/console.log)" >&2
        exit 1
    fi
    echo "$name: PASS"
}
