#!/usr/bin/env bash
# Live device-mapper test of cowlist (issue 4), run separately from `cargo test` because it
# boots a qemu VM (a few minutes under TCG). Builds cowlist and blkpatch, boots the VM through
# tests/vm/live-cowlist-test (origin vg/origin, classic snapshot vg/snap, known writes listed
# in a manifest), and checks inside the guest, against the real kernel:
#   1. `cowlist vg/snap`, `cowlist /dev/vg/snap` and `cowlist /dev/mapper/vg-snap` exit 0 and
#      print the same list, whose chunks are exactly those the manifest's writes touched;
#   2. `cowlist --data vg/snap | blkpatch COPY_OF_ORIGIN` makes the copy equal the snapshot;
#   3. the origin LV itself is refused (exit 5, snapshot-origin);
#   4. an overflowed snapshot is refused (exit 5, "full sync"), by name (dmsetup status says
#      Invalid) and by its COW device alone (the kernel cleared the header's valid flag);
#   5. --cow on the live -cow device gives the same list as the name.
# Usage: tests/vm/cowlist-live.sh [OUTDIR]   (BLKPIPE_BIN=DIR skips the build)
# Needs what tests/vm/run-in-vm needs (qemu-system-x86, cpio; Debian packages it downloads).
set -euo pipefail

# shellcheck source=tests/vm/vmlib.sh
. "$(dirname "${BASH_SOURCE[0]}")/vmlib.sh"
vm_test_start cowlist-live "${1:-}" cowlist blkpatch
harness="$here/tests/vm/live-cowlist-test"
[ -x "$harness" ] || { echo "cowlist-live: $harness missing (the VM harness)" >&2; exit 2; }
mkdir "$work/bin"
cp "$bin/cowlist" "$bin/blkpatch" "$work/bin/"

vm_test_guest cowlist-live <<'GUEST'

# 1. Three spellings, one list, exactly the written chunks.
for arg in "$VG/$SNAP" "/dev/$VG/$SNAP" "/dev/mapper/$VG-$SNAP"; do
    rc=0
    cowlist --stats "$arg" >"$OUTDIR/list-$(echo "$arg" | tr / _).txt" 2>"$OUTDIR/list.err" || rc=$?
    vm_check "cowlist $arg exits 0 ($(tail -n 1 "$OUTDIR/list.err"))" "$rc"
done
if cmp -s "$OUTDIR/list-${VG}_$SNAP.txt" "$OUTDIR/list-_dev_${VG}_$SNAP.txt"; then r=0; else r=1; fi; vm_check "/dev/VG/LV gives the same list" "$r"
if cmp -s "$OUTDIR/list-${VG}_$SNAP.txt" "$OUTDIR/list-_dev_mapper_$VG-$SNAP.txt"; then r=0; else r=1; fi; vm_check "/dev/mapper/VG-LV gives the same list" "$r"
list="$OUTDIR/list-${VG}_$SNAP.txt"
if head -n 1 "$list" | grep -qx "# blkranges v1 size=$ORIGIN_SIZE chunk=$CHUNK_SIZE"; then r=0; else r=1; fi; vm_check "header names origin and chunk size: $(head -n 1 "$list")" "$r"
r=0
busybox awk -v c="$CHUNK_SIZE" '
    FNR == 1 { file++ }
    /^#/ { next }
    file == 1 && $5 != "base" { for (x = int($3 / c); x * c < $3 + $4; x++) want[x] = 1 }
    file == 2 { for (x = $1 / c; x * c < $1 + $2; x++) got[x] = 1 }
    END {
        bad = 0
        for (x in want) if (!(x in got)) { print "cowlist-live: written chunk " x " not listed"; bad = 1 }
        for (x in got) if (!(x in want)) { print "cowlist-live: chunk " x " listed but never written"; bad = 1 }
        exit bad
    }' "$MANIFEST" "$list" || r=$?
vm_check "listed chunks are exactly the written chunks" "$r"

# 2. --data rolls a copy of the origin back to the snapshot.
busybox dd if="/dev/$VG/$ORIGIN" of=/tmp/origin.img bs=1048576 2>/dev/null
busybox dd if="/dev/$VG/$SNAP" of=/tmp/snap.img bs=1048576 2>/dev/null
rc=0
cowlist --data "$VG/$SNAP" >/tmp/view.patch 2>"$OUTDIR/data.err" || rc=$?
vm_check "cowlist --data exits 0" "$rc"
rc=0
blkpatch /tmp/origin.img </tmp/view.patch 2>"$OUTDIR/blkpatch.err" || rc=$?
vm_check "blkpatch applies the view" "$rc"
if vm_same /tmp/origin.img /tmp/snap.img; then r=0; else r=1; fi
vm_check "origin + view == snapshot, byte for byte (md5)" "$r"

# 3. The origin is not a snapshot.
rc=0
cowlist "$VG/$ORIGIN" >/dev/null 2>"$OUTDIR/origin.err" || rc=$?
if [ "$rc" -eq 5 ] && grep -q snapshot-origin "$OUTDIR/origin.err"; then r=0; else r=1; fi; vm_check "origin refused: exit $rc: $(cat "$OUTDIR/origin.err")" "$r"

# 4. Overflow a 1 MiB snapshot and expect a refusal.
lvcreate -q -s -c 4k -L 1M -n small "$VG/$ORIGIN" >/dev/null
busybox dd if=/dev/zero of="/dev/$VG/$ORIGIN" bs=1048576 count=3 seek=4 oflag=direct 2>/dev/null
sync
dmsetup status "$VG-small" >"$OUTDIR/small-status.txt" 2>&1 || true
rc=0
cowlist "$VG/small" >/dev/null 2>"$OUTDIR/small.err" || rc=$?
if [ "$rc" -eq 5 ] && grep -q "full sync" "$OUTDIR/small.err"; then r=0; else r=1; fi; vm_check "overflowed snapshot refused: exit $rc: $(cat "$OUTDIR/small.err")" "$r"
# The kernel also cleared the header's valid flag: the COW device alone is refused too.
rc=0
cowlist --cow "/dev/mapper/$VG-small-cow" >/dev/null 2>"$OUTDIR/small-cow.err" || rc=$?
if [ "$rc" -eq 5 ] && grep -q "full sync" "$OUTDIR/small-cow.err"; then r=0; else r=1; fi; vm_check "overflowed COW device refused by its header: exit $rc" "$r"
# And the live COW device read directly gives the same list as the name (both read now:
# the writes above added exceptions to vg/snap too).
cowlist "$VG/$SNAP" >"$list"
cowlist --cow "/dev/mapper/$VG-$SNAP-cow" --origin "/dev/$VG/$ORIGIN" >"$OUTDIR/list-cow.txt"
if cmp -s "$list" "$OUTDIR/list-cow.txt"; then r=0; else r=1; fi; vm_check "--cow on the live -cow device gives the same list" "$r"
GUEST

rc=0
"$harness" --quiet --script "$work/guest.sh" "$work/bin" "$outdir" || rc=$?
grep -h '^cowlist-live:' "$outdir/console.log" 2>/dev/null || true
if [ "$rc" -eq 0 ]; then echo "cowlist-live: all checks passed"; else echo "cowlist-live: failed (exit $rc); logs in $outdir" >&2; trap - EXIT; fi
exit "$rc"
