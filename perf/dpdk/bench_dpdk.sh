#!/bin/bash
# bench_dpdk.sh - messages/s and CPU per message of mxgate on its DPDK backend
# (net_af_packet + the userspace TCP stack) against the kernel backend, in one
# run, on the same veth pair between two network namespaces, with the same
# client (mxbench smtp) and the same downstream (Postfix smtp-sink).
#
# msg/s: mxbench's rate (accepted with 250); relayed msg/s: from the start of
# the load until every message was also delivered to the sink (status=sent
# lines in the gateway's log).
# CPU: the gateway process's user+system time (/proc/PID/stat, i.e. what
# getrusage reports) over that same span, times the TSC frequency (perf's cycles
# event is not available in this VM). The DPDK worker busy-polls while
# frames arrive, so its CPU time includes polling.
#
# usage: perf/dpdk/bench_dpdk.sh BUILD_DIR [MESSAGES [CONNECTIONS [SIZE]]]   (root)
set -u
BUILD=$(readlink -f "$1")
MSGS=${2:-20000}; CONNS=${3:-10}; SIZE=${4:-2048}
MXGATE=$BUILD/app/mxgate; MXCTL=$BUILD/app/mxctl; MXBENCH=$BUILD/perf/mxbench
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE=$ROOT/tests/integration
[ "$(id -u)" = 0 ] || { echo "needs root"; exit 1; }
. "$HERE/test_dpdk_lib.sh"
dpdk_env_up mxfb 63 || exit 1
ROUTE_PORT=2727
# Postfix's smtp-sink as the downstream: cheap, so the gateway is measured.
ip netns exec $NS2 /usr/sbin/smtp-sink -u nobody $NET.1:$ROUTE_PORT 1000 >/dev/null 2>&1 &
DPDK_PIDS="$DPDK_PIDS $!"
mkdir -p "$TMP/corpus"
/usr/bin/python3 - "$TMP/corpus" "$SIZE" <<'PY'
import random, sys
out, size = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
for i in range(100):
    words = []
    n = 0
    while n < size:
        w = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
        words.append(w)
        n += len(w) + 1
    body = "\r\n".join(" ".join(words[j:j + 12]) for j in range(0, len(words), 12))
    with open("%s/%03d.eml" % (out, i), "w") as f:
        f.write("From: b@peer.test\r\nTo: user@example.test\r\nSubject: bench %d\r\n"
                "Message-ID: <bench-%d@peer.test>\r\n\r\n%s\r\n" % (i, i, body))
PY
cpu_ticks() { awk '{print $14 + $15}' /proc/$1/stat; }
HZ=$(getconf CLK_TCK)
MHZ=$(awk '/^cpu MHz/ {print $4; exit}' /proc/cpuinfo)

run() { # BACKEND
    local backend=$1
    if [ "$backend" = kernel ]; then
        ip -n $NS1 addr add $NET.2/24 dev $V1
    fi
    dpdk_mxgate_start "" "$backend" || exit 1
    local i d
    # warm-up: ARP, first connections, spool files
    ip netns exec $NS2 "$MXBENCH" smtp --target $NET.2:2525 --corpus "$TMP/corpus" \
        --connections $CONNS --messages 500 --pipelining >/dev/null 2>&1
    local c0 c1 t0 t1
    c0=$(cpu_ticks $GPID)
    t0=$(date +%s.%N)
    ip netns exec $NS2 "$MXBENCH" smtp --target $NET.2:2525 --corpus "$TMP/corpus" \
        --connections $CONNS --messages $MSGS --pipelining --json >"$TMP/$backend.json" 2>"$TMP/$backend.err"
    # the load ends when every message was also relayed to the sink
    for i in $(seq 1 300); do
        d=$(grep -c "status=sent" "$TMP/mxgate.log")
        [ "${d:-0}" -ge $((MSGS + 500)) ] && break
        sleep 0.1
    done
    echo "$backend: delivered $d of $((MSGS + 500)) (warm-up included)"
    c1=$(cpu_ticks $GPID)
    t1=$(date +%s.%N)
    echo "$backend $((c1 - c0)) $(echo "$t1 - $t0" | bc) ${d:-0}" >>"$TMP/cpu"
    kill -TERM $GPID; wait $GPID
    DPDK_PIDS=${DPDK_PIDS/ $GPID/}
    if [ "$backend" = kernel ]; then
        ip -n $NS1 addr del $NET.2/24 dev $V1
    fi
}
run kernel
run dpdk
/usr/bin/python3 - "$TMP" "$HZ" "$MHZ" "$MSGS" "$CONNS" "$SIZE" <<'PY'
import json, sys
tmp, hz, mhz, msgs, conns, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:]
cpu = {l.split()[0]: l.split()[1:] for l in open(tmp + "/cpu")}
rows = {}
for b in ("kernel", "dpdk"):
    r = json.load(open("%s/%s.json" % (tmp, b)))
    ok = r["accepted"]
    ticks, span, delivered = cpu[b]
    cpu_s = int(ticks) / hz
    rows[b] = (ok, r["messages_per_s"], int(delivered) - 500, int(msgs) / float(span), cpu_s,
               cpu_s * mhz * 1e6 / max(ok, 1))
    print("%-6s accepted=%d msg/s=%.0f relayed=%d relayed_msg/s=%.0f gateway_cpu_s=%.2f "
          "cycles/msg=%.0f" % ((b,) + rows[b]))
k, d = rows["kernel"], rows["dpdk"]
print("dpdk/kernel: msg/s x%.2f, relayed msg/s x%.2f, cycles/msg x%.2f "
      "(%s messages of %s bytes, %s connections, %.0f MHz)" % (
          d[1] / k[1], d[3] / k[3], d[5] / k[5], msgs, size, conns, mhz))
PY
cat "$TMP"/kernel.json; echo; cat "$TMP"/dpdk.json
