#!/bin/bash
# Guest side of tests/vm/live-cowlist-test (runs inside the VM as /vm/job).
#
# Setup: VG $LIVE_VG (default "vg", 1 MiB extents) on the scratch disk,
# origin LV $VG/origin ($LIVE_ORIGIN_MIB MiB, default 16, base-filled),
# classic snapshot $VG/snap with $LIVE_CHUNK (default 4k) chunks and a
# $LIVE_COW_MIB MiB COW (default 4), then known writes to the origin (listed in
# $OUTDIR/writes.txt). Then runs the caller's script (/vm/files/live-script)
# or the default cowlist checks.
#
# Environment for the caller's script: VG ORIGIN SNAP CHUNK_SIZE (bytes)
# ORIGIN_SIZE (bytes) MANIFEST (the writes manifest) OUTDIR, and the helpers
# of /vm/guest-lib.sh (already sourced in this shell, not in the child).
set -euo pipefail
# shellcheck source=tests/vm/guest-lib.sh
# shellcheck source=SCRIPTDIR/guest-lib.sh
. /vm/guest-lib.sh

OUTDIR="${OUTDIR:-/out}"
VG="${LIVE_VG:-vg}"
ORIGIN=origin
SNAP=snap
ORIGIN_MIB="${LIVE_ORIGIN_MIB:-16}"
CHUNK="${LIVE_CHUNK:-4k}"
COW_MIB="${LIVE_COW_MIB:-4}"
ORIGIN_SIZE=$((ORIGIN_MIB * 1048576))
case "$CHUNK" in
*k | *K) CHUNK_SIZE=$((${CHUNK%?} * 1024)) ;;
*) CHUNK_SIZE="$CHUNK" ;;
esac
MANIFEST="$OUTDIR/writes.txt"
export VG ORIGIN SNAP CHUNK_SIZE ORIGIN_SIZE MANIFEST OUTDIR

echo "live: setup at uptime $(vm_uptime)s" >&2
pvcreate -q "$SCRATCH_DISK"
vgcreate -q -s 1M "$VG" "$SCRATCH_DISK"
lvcreate -q -L "${ORIGIN_MIB}M" -n "$ORIGIN" "$VG"
vm_manifest_start "$MANIFEST" "live-cowlist-test: origin $VG/$ORIGIN, snapshot $VG/$SNAP, chunk $CHUNK_SIZE bytes"
vm_write "/dev/$VG/$ORIGIN" 0 "$ORIGIN_SIZE" base 4096
sync
lvcreate -q -s -c "$CHUNK" -L "${COW_MIB}M" -n "$SNAP" "$VG/$ORIGIN"
# Known writes to the origin after the snapshot: 4 KiB blocks, one rewrite,
# a 512-byte write, a 12 KiB write across chunks, a 64 KiB write, the last block.
o="/dev/$VG/$ORIGIN"
vm_write "$o" 0 4096 w0
vm_write "$o" 4096 4096 w1
vm_write "$o" $((5 * 4096)) 4096 w2
vm_write "$o" $((100 * 4096)) 4096 w3
vm_write "$o" 0 4096 w4
vm_write "$o" $((300 * 4096 + 1024)) 512 w5
vm_write "$o" $((199 * 4096)) 12288 w6
vm_write "$o" $((1048576)) 65536 w7
vm_write "$o" $((ORIGIN_SIZE - 4096)) 4096 w8
sync

dmsetup table >"$OUTDIR/dmsetup-table.txt"
dmsetup status >"$OUTDIR/dmsetup-status.txt"
dmsetup info -c --noheadings --separator ' ' -o name,major,minor,attr,open,segments,uuid >"$OUTDIR/dmsetup-info.txt"
lvs -a -o+chunk_size,origin,snap_percent "$VG" >"$OUTDIR/lvs.txt"
echo "live: setup done at uptime $(vm_uptime)s" >&2

if [[ -f /vm/files/live-script ]]; then
    chmod +x /vm/files/live-script
    rc=0
    if [[ "$(head -c 2 /vm/files/live-script)" == "#!" ]]; then
        /vm/files/live-script || rc=$?
    else
        sh /vm/files/live-script || rc=$?
    fi
    echo "live: caller's script exited $rc at uptime $(vm_uptime)s" >&2
    exit "$rc"
fi

# Default: cowlist on the three spellings of the snapshot.
fail=0
run_cowlist() { # ARG OUTFILE
    local rc=0
    cowlist "$1" >"$OUTDIR/$2.txt" 2>"$OUTDIR/$2.err" || rc=$?
    printf '%s %s\n' "$rc" "$1" >>"$OUTDIR/cowlist-rc.txt"
    echo "live: cowlist $1 -> $2.txt (exit $rc)" >&2
    if ((rc != 0)); then fail=1; fi
}
: >"$OUTDIR/cowlist-rc.txt"
run_cowlist "$VG/$SNAP" out
run_cowlist "/dev/$VG/$SNAP" out-dev
run_cowlist "/dev/mapper/$VG-$SNAP" out-mapper
echo "live: done at uptime $(vm_uptime)s" >&2
exit "$fail"
