#!/bin/sh
# veth_loop.sh - runs integration_veth.sh's loss case alone, RUNS times, one
# after the other (never in parallel), with seeds SEED0, SEED0+1, ...; keeps
# each run's outputs in OUTDIR/run-SEED/ and prints one summary line per run:
# seed, pass/FAIL, wall seconds, the per-connection times and the stack's
# counters. Bounded by RUNS and by MAXSEC of wall time.
# usage: veth_loop.sh BUILD_DIR OUTDIR RUNS SEED0 [DROP [MAXSEC]]
set -u
B=$1
OUT=$2
RUNS=$3
SEED=$4
DROP=${5:-0.05}
MAXSEC=${6:-2400}
HERE=$(dirname "$0")
mkdir -p "$OUT"
start=$(date +%s)
i=0
while [ $i -lt "$RUNS" ]; do
    if [ $(($(date +%s) - start)) -ge "$MAXSEC" ]; then
        echo "time budget spent after $i runs"
        break
    fi
    s=$((SEED + i))
    d="$OUT/run-$s"
    mkdir -p "$d"
    t0=$(date +%s.%N)
    VETH_CASES=loss5 VETH_IMPAIR="$DROP 0.01 0.01 0 $s" VETH_LOG="$d" \
        sh "$HERE/integration_veth.sh" "$B/tests/tcpstack/dpdk_echo" "$HERE/veth_client.py" \
        >"$d/log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    v() { awk -v k="$1" '$1 == k { print $2 }' "$d/loss5.out" 2>/dev/null; }
    conns=$(grep '^conn ' "$d/log" | sed 's/^conn \([0-9]*\): /\1=/' | tr ' \n' '_ ')
    # longest run of once-a-second dumps in which a session's snd_una did not
    # move although it had data to send: the longest stall, in seconds
    stall=$(awk '/^dump/ { delete f; for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
                   k = f["sess"]
                   if (f["una"] == last[k] && f["una"] != f["end"]) run[k]++; else run[k] = 0
                   last[k] = f["una"]; if (run[k] > m) m = run[k] }
                 END { print m + 0 }' "$d/loss5.err" 2>/dev/null)
    printf 'seed %s %s %.1fs %s closed_ok=%s rto=%s retrans=%s fast=%s sack=%s zwp=%s drop=%s stall=%ss\n' \
        "$s" "$([ $rc = 0 ] && echo pass || echo FAIL)" "$(echo "$t1 - $t0" | bc)" "$conns" \
        "$(v closed_ok)" "$(v tcp_rto)" "$(v tcp_retrans)" "$(v tcp_fast_retrans)" \
        "$(v tcp_sack_retrans)" \
        "$(v tcp_zwp)" "$(v impair_drop)" "$stall"
    i=$((i + 1))
done
