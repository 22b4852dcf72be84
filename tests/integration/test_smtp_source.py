#!/usr/bin/python3
"""Postfix's smtp-source against mxgate: 20 sessions sending 1000 messages
(connections reused with -d); every message sent is accounted for in the Maildir,
and the gateway's log shows 1000 queued messages."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest  # noqa: E402

mxgate = sys.argv[1]
for p in ("/usr/sbin/smtp-source", "smtp-source"):
    if os.path.exists(p) or mxtest.shutil.which(p):
        source = p
        break
else:
    mxtest.skip("smtp-source (postfix) is not installed")

F = mxtest.Failures()
gw = mxtest.Gateway(mxgate)
try:
    gw.start()
    N = 1000
    r = subprocess.run([source, "-s", "20", "-m", str(N), "-d", "-l", "2048", "-f", "src@remote.invalid",
                        "-t", "user@example.test", "-M", "client.test",
                        "-r", "1", "127.0.0.1:%d" % gw.port],
                       capture_output=True, timeout=300)
    F.check(r.returncode == 0, "smtp-source exits 0 (%s)" % r.stderr.decode()[-300:])
    msgs = gw.wait_maildir(N, timeout=120)
    F.check(len(msgs) == N, "all %d messages delivered to the Maildir (got %d)" % (N, len(msgs)))
    queued = gw.log().count("queued as")
    F.check(queued == N, "log shows %d 'queued as' lines (got %d)" % (N, queued))
    # the counters moved exactly by the known load
    import json
    st = json.loads(gw.ctl("stats", "--json"))
    flat = {}

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(prefix + "." + k if prefix else k, x)
        else:
            flat[prefix] = v
    walk("", st)

    def find(key):
        hits = [v for k, v in flat.items() if k.split(".")[-1] == key or k == key]
        return hits[0] if hits else None
    F.check(find("msg_accepted") == N, "stats: msg_accepted == %d (got %s)" % (N, find("msg_accepted")))
    # 20 smtp-source sessions + the harness's start-up probe connection
    F.check(find("conn_total") == 21, "stats: conn_total == 21 (got %s)" % find("conn_total"))
    F.check(find("delivery_ok") == N, "stats: delivery_ok == %d (got %s)" % (N, find("delivery_ok")))
    F.check(find("delivery_deferred") == 0, "stats: delivery_deferred == 0 (got %s)" % find("delivery_deferred"))
    F.check(find("conn_open") == 0, "stats: conn_open back to 0 (got %s)" % find("conn_open"))
    F.check(gw.stop() == 0, "clean stop")
finally:
    if F.items:
        print("---- mxgate log (tail) ----\n" + gw.log()[-4000:])
    gw.cleanup()
F.finish()
