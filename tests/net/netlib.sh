#!/bin/bash
# Shared settings and helpers of the blkpipe network test harness (tests/net).
# Sourced, not executed.

# Where setup keeps its state (keys, sshd config, pid file, env file).
net_state_dir() {
    printf '%s\n' "${BLKPIPE_NET_STATE:-/tmp/blkpipe-net}"
}

net_die() {
    printf '%s: error: %s\n' "${0##*/}" "$*" >&2
    exit 2
}

net_log() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
}

# net_load STATE: read the env file written by setup (NET_* variables).
net_load() {
    local state="$1"
    [[ -f "$state/env" ]] || net_die "no network set up in $state (run tests/net/setup first)"
    # shellcheck source=/dev/null
    source "$state/env"
}

# net_wire_bytes: bytes on the wire of the veth pair so far, both directions,
# as counted by the src end (tx + rx, link-layer frames).
net_wire_bytes() {
    local tx rx
    tx="$(ip netns exec "$NET_NS_SRC" cat "/sys/class/net/$NET_IF_SRC/statistics/tx_bytes")"
    rx="$(ip netns exec "$NET_NS_SRC" cat "/sys/class/net/$NET_IF_SRC/statistics/rx_bytes")"
    printf '%s\n' "$((tx + rx))"
}
