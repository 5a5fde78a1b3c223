# shellcheck shell=sh
# Helpers for scripts running inside the blkpipe test VM. run-in-vm puts this
# file at /vm/guest-lib.sh; source it with `. /vm/guest-lib.sh` (works in
# busybox sh and in bash). vm_check also serves host-side checks (vmsync-live).
#
# Deterministic data: a write with stamp S at byte offset O of length L and
# granule G fills each G-byte granule at device byte offset X
# (O <= X < O+L, X - O a multiple of G) with the 32-byte record
# sprintf("%-31s\n", S " off=" X) repeated G/32 times. G is a power of two,
# 32 <= G; O and L are multiples of 512 (writes use O_DIRECT).

# vm_gen STAMP OFFSET LENGTH GRANULE: print the data of such a write.
vm_gen() {
    busybox awk -v s="$1" -v o="$2" -v l="$3" -v g="$4" 'BEGIN {
        n = g / 32
        for (x = o; x < o + l; x += g) {
            b = sprintf("%-31s\n", s " off=" x)
            for (i = 1; i < n; i *= 2) b = b b
            printf "%s", b
        }
    }'
}

# vm_manifest_start FILE [TITLE]: start a manifest of writes in FILE; later
# vm_write calls append to it (VM_MANIFEST, VM_SEQ).
vm_manifest_start() {
    VM_MANIFEST="$1"
    VM_SEQ=0
    {
        printf '# blkpipe VM write manifest%s: every write, in the order made.\n' "${2:+ ($2)}"
        printf '# Data rule: each GRANULE-byte granule at device byte offset X holds the\n'
        printf '# 32-byte record sprintf("%%-31s\\n", STAMP " off=" X) repeated GRANULE/32 times.\n'
        printf '# Writes use O_DIRECT (dd oflag=direct).\n'
        printf '# seq device offset_bytes length_bytes stamp granule_bytes\n'
    } >"$VM_MANIFEST"
}

# vm_write DEVICE OFFSET LENGTH STAMP [GRANULE]: write deterministic data
# with O_DIRECT and record it in the manifest (if one was started).
vm_write() {
    _dev="$1" _off="$2" _len="$3" _stamp="$4" _gran="${5:-512}"
    _bs="$_len"
    if [ "$_len" -gt 1048576 ]; then _bs=1048576; fi
    if [ $((_len % _bs)) -ne 0 ] || [ $((_off % 512)) -ne 0 ] || [ $((_len % 512)) -ne 0 ]; then
        echo "vm_write: bad offset/length $_off/$_len" >&2
        return 1
    fi
    # busybox dd: static, so much faster to start under TCG than GNU dd.
    vm_gen "$_stamp" "$_off" "$_len" "$_gran" |
        busybox dd of="$_dev" bs="$_bs" count=$((_len / _bs)) seek="$_off" \
            oflag=seek_bytes,direct iflag=fullblock conv=notrunc 2>/dev/null || {
        echo "vm_write: dd to $_dev failed" >&2
        return 1
    }
    if [ -n "${VM_MANIFEST:-}" ]; then
        printf '%d %s %d %d %s %d\n' "$VM_SEQ" "$_dev" "$_off" "$_len" "$_stamp" "$_gran" >>"$VM_MANIFEST"
        VM_SEQ=$((VM_SEQ + 1))
    fi
}

# vm_dump DEVICE FILE: copy a whole device to FILE (O_DIRECT reads).
vm_dump() {
    busybox dd if="$1" of="$2" bs=1048576 iflag=direct 2>/dev/null || {
        echo "vm_dump: reading $1 failed" >&2
        return 1
    }
}

# vm_digest FILE: the md5 of FILE's bytes. An exact check of "same bytes?" that does not come
# from the tools under test: coreutils' md5sum (build-initramfs puts it in /usr/local/bin).
# Under TCG it reads 64 MiB in about 1.2 s where busybox's sha256sum takes 4.5-7 s and
# busybox's cmp 12 s; nothing here is adversarial, and any changed byte changes the digest.
vm_digest() {
    /usr/local/bin/md5sum <"$1" | cut -d' ' -f1
}

# vm_same A B: status 0 when A and B hold the same bytes (by vm_digest; never when A could
# not be read, which would make both digests empty).
vm_same() {
    _sum="$(vm_digest "$1")"
    [ -n "$_sum" ] && [ "$_sum" = "$(vm_digest "$2")" ]
}

# vm_uptime: seconds since boot.
vm_uptime() {
    cut -d' ' -f1 /proc/uptime
}

# vm_check DESCRIPTION STATUS: print "$VM_TEST: ok: DESCRIPTION" when STATUS is 0, else
# "$VM_TEST: FAIL: DESCRIPTION" and set VM_FAILED=1; a test ends with `exit "$VM_FAILED"`.
# shellcheck disable=SC2034  # VM_FAILED is read by the script that sources this file
VM_FAILED=0
# shellcheck disable=SC2034
vm_check() {
    if [ "$2" -eq 0 ]; then
        echo "${VM_TEST:-test}: ok: $1"
    else
        echo "${VM_TEST:-test}: FAIL: $1"
        VM_FAILED=1
    fi
}
