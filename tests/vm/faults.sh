#!/usr/bin/env bash
# Read errors from a real device (issue 6): inside the qemu VM, device-mapper's `error`
# target makes a source that returns EIO at a known offset. Checks that blkread-chunks,
# blkhash and blkdiff fail naming the offset, that no record at or past it is ever emitted,
# that no end record is written, and that blkpatch downstream fails with the target holding
# exactly the data before the bad region. And a target that fails writes: blkpatch fails and
# its state file does not claim the failed region.
# Usage: tests/vm/faults.sh [OUTDIR]   (BLKPIPE_BIN=DIR skips the build)
set -euo pipefail

# shellcheck source=tests/vm/vmlib.sh
# shellcheck source=SCRIPTDIR/vmlib.sh
. "$(dirname "${BASH_SOURCE[0]}")/vmlib.sh"
vm_test_start faults "${1:-}" blkread-chunks blkpatch blkhash blkdiff

vm_test_guest faults <<'GUEST'
mib=$((1 << 20))
bad=$((18 * mib + 8192))          # first byte that fails (not on a 4 MiB boundary)
bad_len=65536
size=$((32 * mib))
# Random data on the scratch disk, then a device whose bytes [bad, bad+bad_len) fail.
dd if=/dev/urandom of="$SCRATCH_DISK" bs=1M count=32 oflag=direct status=none
s1=$((bad / 512)); s2=$((bad_len / 512)); s3=$(((size - bad - bad_len) / 512))
dmsetup create flaky --table "0 $s1 linear $SCRATCH_DISK 0
$s1 $s2 error
$((s1 + s2)) $s3 linear $SCRATCH_DISK $((s1 + s2))"
dev=/dev/mapper/flaky
[ "$(blockdev --getsize64 "$dev")" -eq "$size" ]

# blkread-chunks: exit 4 naming the offset; only records below it.
rc=0
echo "0 $size" | blkread-chunks "$dev" >/tmp/p 2>/tmp/err || rc=$?
vm_check "blkread-chunks exits 4 on EIO (rc=$rc: $(cat /tmp/err))" "$([ "$rc" -eq 4 ]; echo $?)"
vm_check "the error names offset $bad" "$(grep -q "offset $bad" /tmp/err; echo $?)"
rc=0
blkpatch --list </tmp/p >/tmp/list 2>/tmp/err2 || rc=$?
vm_check "the stream has no end record (blkpatch --list exits 3: $(cat /tmp/err2))" "$([ "$rc" -eq 3 ]; echo $?)"
maxend=$(awk '{ e = $2 + $3; if (e > m) m = e } END { print m + 0 }' /tmp/list)
vm_check "no record reaches the bad region (last end $maxend <= $bad)" "$([ "$maxend" -le "$bad" ]; echo $?)"
rc=0
blkpatch /tmp/target.img </tmp/p 2>/tmp/err3 || rc=$?
vm_check "blkpatch downstream exits 3 ($(cat /tmp/err3))" "$([ "$rc" -eq 3 ]; echo $?)"
vm_check "the target holds the source up to the last record" \
    "$(cmp -n "$maxend" /tmp/target.img "$SCRATCH_DISK" >/dev/null; echo $?)"

# blkhash: exit 4 naming the offset, no end record.
rc=0
blkhash "$dev" >/tmp/h 2>/tmp/err || rc=$?
vm_check "blkhash exits 4 on EIO (rc=$rc: $(cat /tmp/err))" "$([ "$rc" -eq 4 ]; echo $?)"
vm_check "blkhash names the failing offset" "$(grep -Eq "offset (1887[0-9]{4}|$bad)" /tmp/err; echo $?)"

# blkdiff with the failing device on the local side: exit 4, no end record downstream.
dd if="$SCRATCH_DISK" of=/tmp/remote.img bs=1M count=32 status=none
rc=0
blkhash /tmp/remote.img | blkdiff "$dev" >/tmp/d 2>/tmp/err || rc=$?
vm_check "blkdiff exits 4 on EIO (rc=$rc: $(cat /tmp/err))" "$([ "$rc" -eq 4 ]; echo $?)"
rc=0
blkpatch --dry-run </tmp/d 2>/dev/null || rc=$?
vm_check "blkdiff's stream is incomplete (blkpatch exits $rc)" "$([ "$rc" -eq 3 ]; echo $?)"

dmsetup remove flaky

# Write errors: a target whose bytes [bad, bad+bad_len) fail, on the second half of the
# scratch disk. Buffered writes succeed and the error comes back at write-back (blkpatch's
# write-behind or its final fsync): blkpatch must fail, and its state file must not claim
# the failed region.
t0=$((size / 512))
dmsetup create badtarget --table "0 $s1 linear $SCRATCH_DISK $t0
$s1 $s2 error
$((s1 + s2)) $s3 linear $SCRATCH_DISK $((t0 + s1 + s2))"
echo "0 $size" | blkread-chunks /tmp/remote.img >/tmp/full
rc=0
blkpatch --state /tmp/wstate /dev/mapper/badtarget </tmp/full 2>/tmp/err || rc=$?
vm_check "blkpatch exits 4 when the target fails writes (rc=$rc: $(cat /tmp/err))" "$([ "$rc" -eq 4 ]; echo $?)"
vm_check "the error is one line about writing" "$([ "$(wc -l </tmp/err)" -eq 1 ] && grep -Eq 'write|fsync' /tmp/err; echo $?)"
read -r _ applied < <(blkpatch --print-state --state /tmp/wstate)
vm_check "the state file does not claim the failed region (applied $applied <= $bad)" "$([ "$applied" -le "$bad" ]; echo $?)"
dmsetup remove badtarget
GUEST

vm_test_run faults --scratch-size 64M
