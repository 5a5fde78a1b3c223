#!/usr/bin/env bash
# A returning copy with dm-era (issue 16), in the qemu VM on Debian's kernel: a copy of a
# dm-era device leaves (the era it left in is recorded with a checkpoint), the source is
# written while it is away, and on return only the era blocks written since then are read
# (era_invalidate --written-since ERA | cowlist --era-invalidate, then
# blksync --changed LIST, which runs blkread-chunks --ranges LIST | blkpatch); the
# whole-device digests of both sides then match. The source device's own
# read counter (/sys/block/dm-N/stat) shows only the changed regions were read.
# Usage: tests/vm/era-return.sh [OUTDIR]   (BLKPIPE_BIN=DIR skips the build)
set -euo pipefail

# shellcheck source=tests/vm/vmlib.sh
# shellcheck source=SCRIPTDIR/vmlib.sh
. "$(dirname "${BASH_SOURCE[0]}")/vmlib.sh"
vm_test_start era "${1:-}" blkread-chunks blkpatch blkhash cowlist

vm_test_guest era-return <<'GUEST'
mib=$((1 << 20))
size=$((32 * mib))
# 8 MiB of era metadata, then a 32 MiB origin, on the scratch disk; era blocks of 64 KiB.
dmsetup create era-meta --table "0 16384 linear $SCRATCH_DISK 0"
dmsetup create era-orig --table "0 65536 linear $SCRATCH_DISK 16384"
dd if=/dev/zero of=/dev/mapper/era-meta bs=1M count=1 oflag=direct status=none
dd if=/dev/urandom of=/dev/mapper/era-orig bs=1M count=32 oflag=direct status=none
dmsetup create era --table "0 65536 era /dev/mapper/era-meta /dev/mapper/era-orig 128"
src=/dev/mapper/era
era_now() { dmsetup status era | awk '{ print $6 }'; }

# The copy leaves: a checkpoint starts a new era, the copy is taken in it.
dmsetup message era 0 checkpoint
left=$(era_now)
echo "0 $size" | blkread-chunks "$src" | blkpatch /tmp/copy.img
vm_check "the copy equals the source when it leaves" "$(vm_same "$src" /tmp/copy.img; echo $?)"

# Writes while away: 4 KiB at 1 MiB + 4 KiB, 100 KiB at 10 MiB - 8 KiB (three era
# blocks), 4 KiB at the last block.
dd if=/dev/urandom of="$src" bs=4096 seek=257 count=1 oflag=direct conv=notrunc status=none
dd if=/dev/urandom of="$src" bs=1024 seek=$((10 * 1024 - 8)) count=100 oflag=direct conv=notrunc status=none
dd if=/dev/urandom of="$src" bs=4096 seek=$((size / 4096 - 1)) count=1 oflag=direct conv=notrunc status=none
vm_check "the source changed while the copy was away" "$(! cmp -s "$src" /tmp/copy.img; echo $?)"

# The copy returns: the era blocks written since it left, from a metadata snapshot.
dmsetup message era 0 checkpoint
dmsetup message era 0 take_metadata_snap
era_invalidate --metadata-snapshot --written-since "$left" /dev/mapper/era-meta >/tmp/era.xml
dmsetup message era 0 drop_metadata_snap
cowlist --era-invalidate /tmp/era.xml --block-size 64K --origin-size "$size" >/tmp/list
cat /tmp/list
# Era blocks 16 (1 MiB), 159..161 (10 MiB - 64 KiB .. 10 MiB + 128 KiB), 511 (the last).
want="$(printf '1048576 65536\n10420224 196608\n33488896 65536')"
vm_check "the list holds the era blocks written while away ($(grep -v '^#' /tmp/list | tr '\n' ' '))" \
    "$([ "$(grep -v '^#' /tmp/list)" = "$want" ]; echo $?)"
dm="dm-$(dmsetup info -c --noheadings -o minor era | tr -d " ")"
sync
echo 3 >/proc/sys/vm/drop_caches
before=$(awk '{ print $3 }' "/sys/block/$dm/stat")
rc=0
blksync --changed /tmp/list --stats "$src" /tmp/copy.img 2>/tmp/read.err || rc=$?
vm_check "blksync --changed exits 0 (rc=$rc)" "$rc"
after=$(awk '{ print $3 }' "/sys/block/$dm/stat")
read_bytes=$(((after - before) * 512))
cat /tmp/read.err
listed=$((65536 * 5))
vm_check "the source device read $read_bytes bytes for $listed listed (device: $size)" \
    "$([ "$read_bytes" -ge "$listed" ] && [ "$read_bytes" -le $((listed + 4 * mib)) ]; echo $?)"
vm_check "blkread-chunks read only the listed regions" \
    "$(grep -q "bytes read from devices: $listed\$" /tmp/read.err; echo $?)"
sd=$(blkhash --digest "$src" | cut -d' ' -f1)
cd=$(blkhash --digest /tmp/copy.img | cut -d' ' -f1)
vm_check "whole-device digests match after the return ($sd, $cd)" "$([ "$sd" = "$cd" ]; echo $?)"
vm_check "the returned copy equals the source" "$(vm_same "$src" /tmp/copy.img; echo $?)"
GUEST

vm_test_run era-return --scratch-size 64M \
    --add "$here/shell/blksync" --add "$here/shell/lib/blkpipe.sh:/usr/local/bin/lib/blkpipe.sh"
