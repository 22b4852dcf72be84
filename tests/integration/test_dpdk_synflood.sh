#!/bin/bash
# test_dpdk_synflood.sh - the DPDK backend under a SYN flood: hping3 --flood
# from the kernel-side namespace at mxgate's SMTP port (bounded in time,
# stopped by PID) while swaks, smtplib (checksummed bodies) and smtp-source
# keep sending mail through the same port. Every message must arrive intact
# and the SYN-cookie counter in `mxctl stats --json` must have moved (the
# flood overflows the SYN backlog, so the stack answers with cookies).
# usage: test_dpdk_synflood.sh MXGATE MXCTL [FLOOD_SECONDS]
set -u
MXGATE=$(readlink -f "$1")
MXCTL=$(readlink -f "$2")
FLOOD_S=${3:-15}
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root"; exit 77; fi
for t in ip ethtool swaks hping3; do command -v $t >/dev/null || { echo "SKIP: $t missing"; exit 77; }; done
. "$HERE/test_dpdk_lib.sh"
dpdk_env_up mxf 62 || exit 1
fail=0
dpdk_mxgate_start "" || exit 1
# A spoofed on-link source nobody answers for: the SYN-ACKs go unanswered
# (no RST from a real kernel to clear them), so half-open connections pile up
# as in a real flood (mxgate's ARP requests for it go unanswered too).
ip netns exec $NS2 timeout $((FLOOD_S + 5)) hping3 --flood -q -S -p 2525 -a $NET.77 $NET.2 \
    >"$TMP/hping.out" 2>&1 &
FPID=$!
DPDK_PIDS="$DPDK_PIDS $FPID"
t0=$(date +%s)
sleep 2
c0=$(dpdk_stat tcp_syncookies)
echo "== during the flood: swaks"
dpdk_swaks synflood || fail=1
echo "== during the flood: smtplib, 20 checksummed messages"
ip netns exec $NS2 timeout 120 /usr/bin/python3 "$HERE/dpdk_client.py" $NET.2 2525 20 "$TMP/sink" 21 || fail=1
echo "== during the flood: smtp-source, 5 sessions, 50 messages"
dpdk_smtp_source 5 50 || fail=1
if kill -0 $FPID 2>/dev/null; then
    echo "clients finished with the flood still running ($(( $(date +%s) - t0 )) s in)"
else
    echo "NOTE: the flood ended before the clients did ($(( $(date +%s) - t0 )) s in)"
fi
c1=$(dpdk_stat tcp_syncookies)
kill -TERM $FPID 2>/dev/null; wait $FPID 2>/dev/null
DPDK_PIDS=${DPDK_PIDS/ $FPID/}
rx=$(dpdk_stat nic_rx_packets)
echo "mxctl stats: tcp_syncookies=$c1 (at 2 s: $c0) tcp_drops=$(dpdk_stat tcp_drops) nic_rx_packets=$rx nic_rx_missed=$(dpdk_stat nic_rx_missed)"
[ "${c1:-0}" -gt 0 ] || { echo "FAIL: tcp_syncookies did not move"; fail=1; }
kill -TERM $GPID; wait $GPID; rc=$?
DPDK_PIDS=${DPDK_PIDS/ $GPID/}
[ $rc = 0 ] || { echo "FAIL: mxgate exit status $rc"; fail=1; }
grep "queue 0:" "$TMP/mxgate.log"
tail -3 "$TMP/hping.out"
if [ $fail != 0 ]; then echo "---- mxgate log (tail)"; tail -40 "$TMP/mxgate.log"; fi
exit $fail
