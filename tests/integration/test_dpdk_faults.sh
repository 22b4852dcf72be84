#!/bin/bash
# test_dpdk_faults.sh - the DPDK backend's end-to-end flows under faults:
# mxgate's own seeded impairment layer (no netem in these kernels) drops,
# reorders, duplicates and delays frames in both directions of its port,
# so both the kernel clients' TCP and mxgate's stack (server side and its
# active opens to the downstream) must recover. swaks, smtplib (SHA-256 of
# every body compared in the sink), smtp-source, and one 10 MB message; all
# must arrive intact, and the retransmission and NIC counters in
# `mxctl stats --json` must have moved.
# usage: test_dpdk_faults.sh MXGATE MXCTL [DROP REORDER DUP DELAY_MS]
set -u
MXGATE=$(readlink -f "$1")
MXCTL=$(readlink -f "$2")
DROP=${3:-3}; REORDER=${4:-1}; DUP=${5:-1}; DELAY=${6:-50}
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root"; exit 77; fi
for t in ip ethtool swaks; do command -v $t >/dev/null || { echo "SKIP: $t missing"; exit 77; }; done
. "$HERE/test_dpdk_lib.sh"
dpdk_env_up mxf 61 || exit 1
fail=0

# stop_mxgate PHASE: counters from mxctl, then SIGTERM and a clean exit
stop_mxgate() {
    local retrans rx tx rc
    retrans=$(dpdk_stat tcp_retransmits)
    rx=$(dpdk_stat nic_rx_packets)
    tx=$(dpdk_stat nic_tx_packets)
    echo "$1: mxctl stats: tcp_retransmits=$retrans tcp_drops=$(dpdk_stat tcp_drops)" \
         "tcp_syncookies=$(dpdk_stat tcp_syncookies) nic_rx_packets=$rx nic_tx_packets=$tx" \
         "nic_rx_missed=$(dpdk_stat nic_rx_missed)"
    [ "${retrans:-0}" -gt 0 ] || { echo "FAIL: $1: tcp_retransmits did not move"; fail=1; }
    [ "${rx:-0}" -gt 1000 ] && [ "${tx:-0}" -gt 1000 ] || { echo "FAIL: $1: NIC packet counters did not move"; fail=1; }
    kill -TERM $GPID; wait $GPID; rc=$?
    DPDK_PIDS=${DPDK_PIDS/ $GPID/}
    [ $rc = 0 ] || { echo "FAIL: $1: mxgate exit status $rc"; fail=1; }
    grep "IMPAIRMENT ON\|queue 0:" "$TMP/mxgate.log"
    grep -c "status=sent" "$TMP/mxgate.log" | sed 's/^/deliveries logged: /'
    if [ $fail != 0 ]; then echo "---- mxgate log (tail)"; tail -40 "$TMP/mxgate.log"; fi
}

echo "== phase 1: drop $DROP% reorder $REORDER% duplicate $DUP% delay $DELAY ms, both directions"
dpdk_mxgate_start "impair { drop = $DROP; reorder = $REORDER; duplicate = $DUP; delay_ms = $DELAY; seed = 42; }" || exit 1
grep -q "IMPAIRMENT ON" "$TMP/mxgate.log" || { echo "FAIL: impairment not reported at start"; exit 1; }
t0=$(date +%s)
echo "== swaks"
dpdk_swaks faults || fail=1
echo "== smtplib, 30 checksummed messages"
ip netns exec $NS2 timeout 150 /usr/bin/python3 "$HERE/dpdk_client.py" $NET.2 2525 30 "$TMP/sink" 11 || fail=1
echo "== smtp-source, 10 sessions, 100 messages"
dpdk_smtp_source 10 100 || fail=1
echo "phase 1 took $(( $(date +%s) - t0 )) s"
stop_mxgate "phase 1"

# The 10 MB message crosses the impaired port twice (kernel -> mxgate, then
# mxgate's own stack -> the sink). Our sender recovers one hole per round
# trip (NewReno, no SACK-based sending yet), so at 3% loss and 100 ms RTT the
# delivery alone takes about 3 minutes; at 1% loss with the same 50 ms each
# way the phase takes about 2 minutes here.
BIG_DROP=${BIG_DROP:-1}; BIG_DELAY=${BIG_DELAY:-50}
echo "== phase 2: one 10 MB message, drop $BIG_DROP% reorder $REORDER% duplicate $DUP% delay $BIG_DELAY ms"
dpdk_mxgate_start "impair { drop = $BIG_DROP; reorder = $REORDER; duplicate = $DUP; delay_ms = $BIG_DELAY; seed = 43; }" || exit 1
t0=$(date +%s)
ip netns exec $NS2 timeout 200 /usr/bin/python3 "$HERE/dpdk_client.py" $NET.2 2525 1 "$TMP/sink" 12 \
    $((10 * 1024 * 1024)) 150 || fail=1
echo "phase 2 took $(( $(date +%s) - t0 )) s"
stop_mxgate "phase 2"
exit $fail
