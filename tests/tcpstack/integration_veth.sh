#!/bin/sh
# integration_veth.sh - the userspace stack (DPDK net_af_packet) against the
# Linux kernel over a veth pair between two network namespaces: ping (ICMP
# echo), handshake, greeting, bulk echo both ways with SHA-256, close; then
# the same with the impairment layer at 5% loss (+ reorder/duplicate).
# Everything it creates is removed on exit, processes are stopped by PID.
# usage: integration_veth.sh DPDK_ECHO VETH_CLIENT_PY
# For loops (tests/tcpstack/veth_loop.sh): VETH_CASES="loss5" runs only the
# named cases, VETH_IMPAIR="drop reorder dup delay seed" replaces loss5's
# impairment, VETH_LOG=DIR keeps each case's output there with the server's
# per-second state dump (MX_ECHO_DEBUG) and `ss -tinoe` of the kernel side.
set -u
ECHO=$1
CLIENT=$2
if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root"; exit 77; fi
for t in ip ethtool timeout; do
    command -v $t >/dev/null || { echo "SKIP: $t missing"; exit 77; }
done
TAG=$$
NS1=mxts$TAG
NS2=mxtk$TAG
V1=mxa$TAG
V2=mxb$TAG
TMP=$(mktemp -d)
SPID=
SSPID=
CAPPID=
cleanup() {
    if [ -n "$SSPID" ]; then kill -TERM "$SSPID" 2>/dev/null; fi
    if [ -n "$CAPPID" ]; then kill -TERM "$CAPPID" 2>/dev/null; fi
    if [ -n "$SPID" ]; then kill -TERM "$SPID" 2>/dev/null; sleep 1; kill -KILL "$SPID" 2>/dev/null; fi
    ip netns del $NS1 2>/dev/null
    ip netns del $NS2 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

ip netns add $NS1 && ip netns add $NS2 || exit 1
ip link add $V1 type veth peer name $V2 || exit 1
ip link set $V1 netns $NS1 && ip link set $V2 netns $NS2 || exit 1
ip netns exec $NS1 sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null
ip netns exec $NS2 sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null
ip -n $NS1 link set lo up
ip -n $NS1 link set $V1 up
ip -n $NS2 link set lo up
ip -n $NS2 addr add 10.99.0.1/24 dev $V2
ip -n $NS2 link set $V2 up
# The kernel leaves TCP checksums to an offload that af_packet never does.
ip netns exec $NS2 ethtool -K $V2 tx off tso off gso off >/dev/null 2>&1
ip netns exec $NS1 ethtool -K $V1 tx off tso off gso off gro off >/dev/null 2>&1

fail=0
run_case() {
    name=$1; shift
    size=$1; shift
    conns=$1; shift
    case " ${VETH_CASES:-clean loss5} " in *" $name "*) ;; *) return ;; esac
    echo "== $name $*"
    ip netns exec $NS1 env ${VETH_LOG:+MX_ECHO_DEBUG=1} timeout 200 "$ECHO" -l 0 --no-huge -m 512 --no-pci --no-shconf \
        --log-level=lib.eal:error --vdev=net_af_packet0,iface=$V1 -- 10.99.0.2/24 2525 180 "$@" \
        >"$TMP/$name.out" 2>"$TMP/$name.err" &
    SPID=$!
    i=0
    while ! grep -q ready "$TMP/$name.out" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 100 ] || ! kill -0 $SPID 2>/dev/null; then
            echo "server did not start"; cat "$TMP/$name.err"; fail=1; SPID=; return
        fi
        sleep 0.2
    done
    if [ "$name" = clean ]; then
        ip netns exec $NS2 timeout 20 /usr/bin/python3 "$CLIENT" ping 10.99.0.2 || fail=1
    fi
    SSPID=
    CAPPID=
    if [ -n "${VETH_LOG:-}" ]; then
        ip netns exec $NS2 timeout 200 /usr/bin/python3 "$(dirname "$CLIENT")/veth_sniff.py" $V2 \
            "$TMP/$name.pcap" &
        CAPPID=$!
        (for _ in $(seq 400); do date +%s.%N; ip netns exec $NS2 ss -tinoe; sleep 0.5; done) \
            >"$TMP/$name.ss" 2>&1 &
        SSPID=$!
    fi
    ip netns exec $NS2 timeout 170 /usr/bin/python3 "$CLIENT" 10.99.0.2 2525 $size $conns || fail=1
    [ -n "$SSPID" ] && kill $SSPID 2>/dev/null
    [ -n "$CAPPID" ] && { kill $CAPPID 2>/dev/null; wait $CAPPID; }
    CAPPID=
    [ -n "${VETH_LOG:-}" ] && ip netns exec $NS2 nstat -az >"$TMP/$name.nstat" 2>&1
    # The client has closed; its FIN may still be lost and resent after
    # its RTO (seconds at 10% loss), so wait up to 10 s for the server to
    # report every session closed rather than a fixed 0.5 s.
    i=0
    while [ "$(grep -c '^closed ' "$TMP/$name.out")" -lt "$conns" ] && [ $i -lt 50 ]; do
        i=$((i + 1))
        sleep 0.2
    done
    sleep 0.5
    kill -TERM $SPID 2>/dev/null
    wait $SPID
    SPID=
    cat "$TMP/$name.out" | tr '\n' ' '; echo
    [ -n "${VETH_LOG:-}" ] && cp "$TMP/$name".* "$VETH_LOG"/
    v() { awk -v k="$1" '$1 == k { print $2 }' "$TMP/$name.out"; }
    [ "$(v sessions)" = "$conns" ] || { echo "FAIL: sessions $(v sessions) != $conns"; fail=1; }
    [ "$(v closed_ok)" = "$conns" ] || { echo "FAIL: closed_ok $(v closed_ok) != $conns"; fail=1; }
    [ "$(v tcp_bad_csum)" = 0 ] || { echo "FAIL: bad TCP checksums"; fail=1; }
    if [ "$name" = clean ]; then
        [ "$(v icmp_echo)" -ge 3 ] || { echo "FAIL: no ICMP echo replies"; fail=1; }
    else
        [ "$(v impair_drop)" -gt 0 ] || { echo "FAIL: impairment did not drop"; fail=1; }
        [ "$(v tcp_retrans)" -gt 0 ] || { echo "FAIL: no retransmissions under loss"; fail=1; }
    fi
}

run_case clean 2000000 3
run_case loss5 1000000 2 ${VETH_IMPAIR:-0.05 0.01 0.01 0 7}
exit $fail
