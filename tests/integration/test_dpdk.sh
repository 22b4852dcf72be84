#!/bin/bash
# test_dpdk.sh - mxgate on its DPDK backend (net_af_packet on one end of a veth
# pair, userspace TCP) serving real kernel clients in another namespace:
# swaks, Python smtplib (checksummed bodies) and Postfix's smtp-source; mxgate
# delivers through its own TCP stack (active opens) to an aiosmtpd downstream
# in the peer namespace. Every namespace, link and process it creates is
# removed on exit; processes are stopped by PID.
# usage: test_dpdk.sh MXGATE
set -u
MXGATE=$(readlink -f "$1")
HERE=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root"; exit 77; fi
for t in ip ethtool swaks; do command -v $t >/dev/null || { echo "SKIP: $t missing"; exit 77; }; done
TAG=$$
NS1=mxgd$TAG; NS2=mxgk$TAG; V1=mxgv$TAG; V2=mxgp$TAG
TMP=$(mktemp -d)
GPID=; SPID=
cleanup() {
    for p in $GPID $SPID; do kill -TERM $p 2>/dev/null; done
    sleep 1
    for p in $GPID $SPID; do kill -KILL $p 2>/dev/null; done
    ip netns del $NS1 2>/dev/null; ip netns del $NS2 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
ip netns add $NS1 && ip netns add $NS2 || exit 1
ip link add $V1 type veth peer name $V2 || exit 1
ip link set $V1 netns $NS1 && ip link set $V2 netns $NS2 || exit 1
for ns in $NS1 $NS2; do ip netns exec $ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null; ip -n $ns link set lo up; done
ip -n $NS1 link set $V1 up
ip -n $NS2 addr add 10.98.0.1/24 dev $V2
ip -n $NS2 link set $V2 up
ip netns exec $NS2 ethtool -K $V2 tx off tso off gso off >/dev/null 2>&1
ip netns exec $NS1 ethtool -K $V1 tx off tso off gso off gro off >/dev/null 2>&1

# downstream in the kernel namespace
mkdir -p "$TMP/sink"
ip netns exec $NS2 /usr/bin/python3 "$HERE/sink.py" 2626 "$TMP/sink" 10.98.0.1 --until-killed </dev/null > "$TMP/sink.out" 2>&1 &
SPID=$!
cat > "$TMP/mxgate.conf" <<CONF
listen { smtp = [ "10.98.0.2:2525" ]; }
dataplane {
  backend = "dpdk"; workers = 1; address = "10.98.0.2/24";
  eal = "--no-huge -m 512 --no-pci --no-shconf --no-telemetry --vdev=net_af_packet0,iface=$V1";
}
spool { dir = "$TMP/spool"; }
control { socket = "$TMP/mxgate.sock"; http = "127.0.0.1:9025"; }
smtp { hostname = "mx.dpdk.test"; }
routes { "example.test" = "smtp:10.98.0.1:2626"; "*" = "maildir:$TMP/maildir"; }
relay_domains = [ "example.test" ];
trusted_networks = [ "127.0.0.0/8" ];
CONF
ip netns exec $NS1 "$MXGATE" -c "$TMP/mxgate.conf" > "$TMP/mxgate.log" 2>&1 &
GPID=$!
fail=0
up=0
for i in $(seq 1 100); do
    if grep -q "listening on" "$TMP/mxgate.log"; then up=1; break; fi
    kill -0 $GPID 2>/dev/null || break
    sleep 0.2
done
[ $up = 1 ] || { echo "FAIL: mxgate did not start"; cat "$TMP/mxgate.log"; exit 1; }
sleep 1 # gratuitous ARP, sink start

echo "== swaks"
ip netns exec $NS2 timeout 60 swaks --server 10.98.0.2:2525 --to user@example.test \
    --from k@peer.test --header "Subject: over dpdk" > "$TMP/swaks.out" 2>&1 \
    && grep -q "250 2.0.0 Ok: queued as" "$TMP/swaks.out" || { echo "FAIL: swaks"; tail -20 "$TMP/swaks.out"; fail=1; }
echo "== smtplib, 100 checksummed messages, delivered through the userspace stack"
ip netns exec $NS2 timeout 120 /usr/bin/python3 "$HERE/dpdk_client.py" 10.98.0.2 2525 100 "$TMP/sink" 7 || fail=1
if command -v smtp-source >/dev/null || [ -x /usr/sbin/smtp-source ]; then
    echo "== smtp-source, 10 sessions x 200 messages"
    before=$(ls "$TMP/sink" | grep -c eml)
    ip netns exec $NS2 timeout 180 /usr/sbin/smtp-source -s 10 -m 200 -d -l 1024 -f src@peer.test \
        -t user@example.test -M peer.test 10.98.0.2:2525 || { echo "FAIL: smtp-source"; fail=1; }
    for i in $(seq 1 150); do
        n=$(ls "$TMP/sink" | grep -c eml)
        [ $((n - before)) -ge 200 ] && break
        sleep 0.2
    done
    n=$(ls "$TMP/sink" | grep -c eml)
    [ $((n - before)) -eq 200 ] || { echo "FAIL: smtp-source: $((n - before)) of 200 delivered"; fail=1; }
fi
kill -TERM $GPID; wait $GPID; rc=$?
GPID=
[ $rc = 0 ] || { echo "FAIL: mxgate exit status $rc"; fail=1; }
grep -c "status=sent" "$TMP/mxgate.log" | sed 's/^/deliveries logged: /'
if [ $fail != 0 ]; then echo "---- mxgate log (tail)"; tail -40 "$TMP/mxgate.log"; fi
exit $fail
