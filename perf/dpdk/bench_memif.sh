#!/bin/bash
# bench_memif.sh - mxgate's userspace TCP stack without the kernel: mxgate on
# its DPDK backend with a net_memif port (memif server, shared memory), and
# memif_smtp on its own copy of the stack as the memif client, which both
# sends the load (SMTP, pipelined envelope) and sinks mxgate's deliveries.
# Prints memif_smtp's JSON and mxgate's CPU seconds and cycles per message
# (CPU time from /proc/PID/stat times the TSC frequency).
#
# usage: perf/dpdk/bench_memif.sh BUILD_DIR [MESSAGES [CONNECTIONS [SIZE]]]
set -u
BUILD=$(readlink -f "$1")
MSGS=${2:-20000}; CONNS=${3:-10}; SIZE=${4:-2048}
MXGATE=$BUILD/app/mxgate; CLIENT=$BUILD/tests/tcpstack/memif_smtp
TMP=$(mktemp -d)
GPID=
cleanup() {
    [ -n "$GPID" ] && kill -TERM $GPID 2>/dev/null && sleep 1 && kill -KILL $GPID 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
cat >"$TMP/mxgate.conf" <<CONF
listen { smtp = [ "10.99.0.2:2525" ]; }
dataplane {
  backend = "dpdk"; workers = 1; address = "10.99.0.2/24";
  eal = "--no-huge -m 512 --no-pci --no-shconf --no-telemetry --file-prefix=mxgm$$ --vdev=net_memif0,role=server,socket=$TMP/memif.sock";
}
spool { dir = "$TMP/spool"; }
control { socket = "$TMP/mxgate.sock"; }
smtp { hostname = "mx.memif.test"; }
routes { "example.test" = "smtp:10.99.0.1:2626"; "*" = "maildir:$TMP/maildir"; }
relay_domains = [ "example.test" ];
CONF
"$MXGATE" -c "$TMP/mxgate.conf" >"$TMP/mxgate.log" 2>&1 &
GPID=$!
for i in $(seq 1 100); do grep -q "listening on" "$TMP/mxgate.log" && break; sleep 0.1; done
grep -q "listening on" "$TMP/mxgate.log" || { echo "mxgate did not start"; cat "$TMP/mxgate.log"; exit 1; }
HZ=$(getconf CLK_TCK); MHZ=$(awk '/^cpu MHz/ {print $4; exit}' /proc/cpuinfo)
c0=$(awk '{print $14 + $15}' /proc/$GPID/stat)
"$CLIENT" --no-huge -m 256 --no-pci --no-shconf --no-telemetry --file-prefix=mxbc$$ \
    --log-level=lib.eal:error --vdev=net_memif0,role=client,socket=$TMP/memif.sock -- \
    10.99.0.1/24 10.99.0.2 $CONNS $MSGS $SIZE 120 >"$TMP/client.json" 2>"$TMP/client.err"
rc=$?
c1=$(awk '{print $14 + $15}' /proc/$GPID/stat)
cat "$TMP/client.json"
/usr/bin/python3 - "$TMP/client.json" $((c1 - c0)) $HZ $MHZ <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = int(sys.argv[2]) / int(sys.argv[3])
print("memif: accepted=%d relayed=%d accepted_msg/s=%.0f relayed_msg/s=%.0f gateway_cpu_s=%.2f "
      "cycles/msg=%.0f (gateway, including its busy-polling)" % (
          r["accepted"], r["delivered"], r["accepted_per_s"], r["relayed_per_s"], cpu,
          cpu * float(sys.argv[4]) * 1e6 / max(r["accepted"], 1)))
PY
[ $rc = 0 ] || { echo "memif_smtp failed ($rc)"; tail -5 "$TMP/client.err"; grep -v "smtp\]\|queue\]" "$TMP/mxgate.log" | tail -5; }
exit $rc
