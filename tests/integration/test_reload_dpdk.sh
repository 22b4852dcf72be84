#!/bin/bash
# test_reload_dpdk.sh - configuration reload on the DPDK backend: mxgate with
# 2 workers on net_af_packet (one end of a veth pair, userspace TCP), kernel
# clients in another namespace. Postfix's smtp-source keeps sending while the
# configuration is reloaded 20 times (smtp.hostname alternates); after each
# reload a fresh session must greet with the new name; every message must
# reach the Maildir and every replaced generation must be released.
# Namespaces, links and processes it creates are removed on exit (by PID).
# usage: test_reload_dpdk.sh MXGATE
set -u
MXGATE=$(readlink -f "$1")
MXCTL=$(dirname "$MXGATE")/mxctl
if [ "$(id -u)" != 0 ]; then echo "SKIP: needs root"; exit 77; fi
for t in ip ethtool /usr/sbin/smtp-source; do
    command -v $t >/dev/null || { echo "SKIP: $t missing"; exit 77; }
done
TAG=$$
NS1=mxrd$TAG; NS2=mxrk$TAG; V1=mxrv$TAG; V2=mxrp$TAG
TMP=$(mktemp -d)
GPID=; SPID=
cleanup() {
    [ -n "$SPID" ] && { touch "$TMP/stop"; pkill -TERM -P $SPID 2>/dev/null; }
    for p in $SPID $GPID; do kill -TERM $p 2>/dev/null; done
    for i in $(seq 1 50); do
        kill -0 $GPID 2>/dev/null || break
        sleep 0.2
    done
    for p in $SPID $GPID; do kill -KILL $p 2>/dev/null; done
    ip netns del $NS1 2>/dev/null; ip netns del $NS2 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
ip netns add $NS1 && ip netns add $NS2 || exit 1
ip link add $V1 type veth peer name $V2 || exit 1
ip link set $V1 netns $NS1 && ip link set $V2 netns $NS2 || exit 1
for ns in $NS1 $NS2; do
    ip netns exec $ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 2>/dev/null
    ip -n $ns link set lo up
done
ip -n $NS1 link set $V1 up
ip -n $NS2 addr add 10.97.0.1/24 dev $V2
ip -n $NS2 link set $V2 up
ip netns exec $NS2 ethtool -K $V2 tx off tso off gso off >/dev/null 2>&1
ip netns exec $NS1 ethtool -K $V1 tx off tso off gso off gro off >/dev/null 2>&1

# the whole file at once: the gateway may read it at any moment
write_conf() {
    cat > "$TMP/mxgate.conf.tmp" <<CONF
listen { smtp = [ "10.97.0.2:2525" ]; }
dataplane {
  backend = "dpdk"; workers = 2; address = "10.97.0.2/24";
  eal = "--no-huge -m 512 --no-pci --no-shconf --no-telemetry --vdev=net_af_packet0,iface=$V1,qpairs=2";
}
spool { dir = "$TMP/spool"; }
control { socket = "$TMP/mxgate.sock"; http = "127.0.0.1:9025"; }
smtp { hostname = "$1"; }
routes { "*" = "maildir:$TMP/maildir"; }
relay_domains = [ "example.test" ];
CONF
    mv "$TMP/mxgate.conf.tmp" "$TMP/mxgate.conf"
}
greeting() {
    ip netns exec $NS2 timeout 20 /usr/bin/python3 -c "
import smtplib
s = smtplib.SMTP('10.97.0.2', 2525, timeout=10)
print(s.ehlo('client.test')[1].split(b'\n')[0].decode())
s.quit()"
}

write_conf gen-a.dpdk
ip netns exec $NS1 "$MXGATE" -c "$TMP/mxgate.conf" > "$TMP/mxgate.log" 2>&1 &
GPID=$!
up=0
for i in $(seq 1 100); do
    if grep -q "listening on" "$TMP/mxgate.log"; then up=1; break; fi
    kill -0 $GPID 2>/dev/null || break
    sleep 0.2
done
if [ $up != 1 ]; then
    echo "FAIL: mxgate did not start"; cat "$TMP/mxgate.log"; exit 1
fi
fail=0
g=$(greeting)
[ "$g" = gen-a.dpdk ] || { echo "FAIL: generation 1 greets as '$g'"; fail=1; }

# smtp-source runs in rounds until every reload is done, so each reload
# happens while mail is being sent however fast this machine is.
ROUND=300
(
    for r in $(seq 1 40); do
        [ -e "$TMP/stop" ] && break
        ip netns exec $NS2 timeout 300 /usr/sbin/smtp-source -s 5 -m $ROUND -f src@remote.test \
            -t user@example.test -M peer.test 10.97.0.2:2525 >> "$TMP/source.out" 2>&1
        echo $? >> "$TMP/source.rc"
    done
) &
SPID=$!
RELOADS=20
under_load=0
for i in $(seq 1 $RELOADS); do
    if [ $((i % 2)) = 1 ]; then want=gen-b.dpdk; else want=gen-a.dpdk; fi
    write_conf $want
    kill -0 $SPID 2>/dev/null && under_load=$((under_load + 1))
    out=$(timeout 60 "$MXCTL" -s "$TMP/mxgate.sock" reload)
    # first line; the next ones say that the delivery HELO name needs a restart
    if [ $? != 0 ] || [ "${out%%$'\n'*}" != "reloaded: generation $((i + 1))" ]; then
        echo "FAIL: reload $i answered '$out'"; fail=1
    fi
    g=$(greeting)
    [ "$g" = "$want" ] || { echo "FAIL: after reload $i a new session greets as '$g', not $want"; fail=1; }
done
touch "$TMP/stop"
echo "reloads while smtp-source was sending: $under_load of $RELOADS"
[ $under_load = $RELOADS ] || { echo "FAIL: smtp-source rounds ran out before the reloads"; fail=1; }
wait $SPID; SPID=
rounds=$(wc -l < "$TMP/source.rc")
bad=$(grep -vc '^0$' "$TMP/source.rc")
MSGS=$((rounds * ROUND))
echo "smtp-source: $rounds rounds of $ROUND messages, $bad failed"
[ "$bad" = 0 ] || { echo "FAIL: smtp-source failed: $(tail -3 $TMP/source.out)"; fail=1; }
n=0
for i in $(seq 1 150); do
    n=$(ls "$TMP/maildir/new" 2>/dev/null | wc -l)
    [ "$n" -ge $MSGS ] && break
    sleep 0.2
done
[ "$n" = $MSGS ] || { echo "FAIL: $n of $MSGS messages in the Maildir"; fail=1; }
rel=0
for i in $(seq 1 50); do
    rel=$(grep -c "generation [0-9]* released" "$TMP/mxgate.log")
    [ "$rel" -ge $RELOADS ] && break
    sleep 0.2
done
[ "$rel" = $RELOADS ] || { echo "FAIL: $rel of $RELOADS replaced generations released"; fail=1; }
kill -TERM $GPID; wait $GPID; grc=$?; GPID=
[ $grc = 0 ] || { echo "FAIL: mxgate exit $grc"; fail=1; }
if [ $fail != 0 ]; then tail -40 "$TMP/mxgate.log"; exit 1; fi
echo "ok: $RELOADS reloads on the dpdk backend, $MSGS messages delivered, generations released"
exit 0
