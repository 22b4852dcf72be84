# test_dpdk_lib.sh - shared set-up of the DPDK backend's end-to-end tests
# (sourced by test_dpdk_faults.sh and test_dpdk_synflood.sh, not run alone).
#
# dpdk_env_up PREFIX: two network namespaces joined by a veth pair, named
# PREFIX{d,k,v,p}$$; mxgate's end has no address (its DPDK net_af_packet port
# owns it, 10.98.x.2), the kernel end is 10.98.x.1 with checksum offloads off.
# An aiosmtpd sink listens on the kernel side (port 2626). Every namespace,
# link and process it creates is removed by dpdk_env_down, which the EXIT
# trap calls; processes are stopped by PID.
# dpdk_mxgate_start CONF_EXTRA: writes the config (CONF_EXTRA goes inside
# the dataplane block) and starts mxgate in the DPDK namespace.

DPDK_PIDS=
dpdk_env_down() {
    for p in $DPDK_PIDS; do kill -TERM "$p" 2>/dev/null; done
    sleep 1
    for p in $DPDK_PIDS; do kill -KILL "$p" 2>/dev/null; done
    [ -n "${NS1:-}" ] && ip netns del "$NS1" 2>/dev/null
    [ -n "${NS2:-}" ] && ip netns del "$NS2" 2>/dev/null
    [ -n "${TMP:-}" ] && rm -rf "$TMP"
}

# dpdk_env_up PREFIX SUBNET_OCTET
dpdk_env_up() {
    local tag=$$
    NS1=${1}d$tag; NS2=${1}k$tag; V1=${1}v$tag; V2=${1}p$tag
    NET=10.98.$2
    TMP=$(mktemp -d)
    trap dpdk_env_down EXIT
    trap 'exit 1' INT TERM
    ip netns add "$NS1" && ip netns add "$NS2" || return 1
    ip link add "$V1" type veth peer name "$V2" || return 1
    ip link set "$V1" netns "$NS1" && ip link set "$V2" netns "$NS2" || return 1
    for ns in $NS1 $NS2; do
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null
        ip -n "$ns" link set lo up
    done
    ip -n "$NS1" link set "$V1" up
    ip -n "$NS2" addr add "$NET.1/24" dev "$V2"
    ip -n "$NS2" link set "$V2" up
    # af_packet hands the kernel's unfilled checksums through otherwise
    ip netns exec "$NS2" ethtool -K "$V2" tx off tso off gso off >/dev/null 2>&1
    ip netns exec "$NS1" ethtool -K "$V1" tx off tso off gso off gro off >/dev/null 2>&1
    mkdir -p "$TMP/sink"
    ip netns exec "$NS2" /usr/bin/python3 "$HERE/sink.py" 2626 "$TMP/sink" "$NET.1" --until-killed \
        </dev/null >"$TMP/sink.out" 2>&1 &
    DPDK_PIDS="$DPDK_PIDS $!"
}

# dpdk_mxgate_start "EXTRA DATAPLANE KEYS" [BACKEND]
# BACKEND "kernel" runs the same gateway on the kernel's TCP (the veth end
# then carries $NET.2); the downstream port is $ROUTE_PORT (default 2626).
dpdk_mxgate_start() {
    local backend=${2:-dpdk} vdev="--vdev=net_af_packet0,iface=$V1" addr="address = \"$NET.2/24\";"
    [ "$backend" = kernel ] && vdev= && addr=
    cat >"$TMP/mxgate.conf" <<CONF
listen { smtp = [ "$NET.2:2525" ]; }
dataplane {
  backend = "$backend"; workers = 1; $addr
  eal = "--no-huge -m 512 --no-pci --no-shconf --no-telemetry $vdev";
  $1
}
spool { dir = "$TMP/spool"; }
control { socket = "$TMP/mxgate.sock"; }
smtp { hostname = "mx.dpdk.test"; }
routes { "example.test" = "smtp:$NET.1:${ROUTE_PORT:-2626}"; "*" = "maildir:$TMP/maildir"; }
relay_domains = [ "example.test" ];
trusted_networks = [ "127.0.0.0/8" ];
CONF
    ip netns exec "$NS1" "$MXGATE" -c "$TMP/mxgate.conf" >"$TMP/mxgate.log" 2>&1 &
    GPID=$!
    DPDK_PIDS="$DPDK_PIDS $GPID"
    local i
    for i in $(seq 1 100); do
        grep -q "listening on" "$TMP/mxgate.log" && { sleep 1; return 0; }
        kill -0 "$GPID" 2>/dev/null || break
        sleep 0.2
    done
    echo "FAIL: mxgate did not start"
    cat "$TMP/mxgate.log"
    return 1
}

# dpdk_stat NAME: one counter from `mxctl stats --json` (0 when absent)
dpdk_stat() {
    "$MXCTL" -s "$TMP/mxgate.sock" stats --json 2>/dev/null |
        /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["counters"].get(sys.argv[1], 0))' "$1"
}

# dpdk_count_sink: messages stored by the sink so far
dpdk_count_sink() { ls "$TMP/sink" | grep -c '\.eml$'; }

# dpdk_smtp_source SESSIONS MESSAGES: smtp-source from the kernel side; all
# MESSAGES must reach the sink within 60 s
dpdk_smtp_source() {
    local before n i
    before=$(dpdk_count_sink)
    ip netns exec "$NS2" timeout 180 /usr/sbin/smtp-source -s "$1" -m "$2" -d -l 1024 \
        -f src@peer.test -t user@example.test -M peer.test "$NET.2:2525" ||
        { echo "FAIL: smtp-source"; return 1; }
    for i in $(seq 1 300); do
        n=$(dpdk_count_sink)
        [ $((n - before)) -ge "$2" ] && break
        sleep 0.2
    done
    n=$(dpdk_count_sink)
    [ $((n - before)) -eq "$2" ] || { echo "FAIL: smtp-source: $((n - before)) of $2 delivered"; return 1; }
    echo "smtp-source: $2 of $2 delivered"
}

# dpdk_swaks: one message with swaks
dpdk_swaks() {
    ip netns exec "$NS2" timeout 90 swaks --server "$NET.2:2525" --to user@example.test \
        --from k@peer.test --header "Subject: over dpdk $1" >"$TMP/swaks.out" 2>&1 &&
        grep -q "250 2.0.0 Ok: queued as" "$TMP/swaks.out" ||
        { echo "FAIL: swaks"; tail -20 "$TMP/swaks.out"; return 1; }
}
