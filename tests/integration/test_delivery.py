#!/usr/bin/python3
"""Delivery to a downstream SMTP server: downstream down -> deferred with a
next attempt time; downstream up + flush -> delivered; permanent 5xx -> one
DSN to the sender; a null sender never gets a DSN."""
import email
import json
import os
import smtplib
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest  # noqa: E402

mxgate = sys.argv[1]
try:
    subprocess.run(["/usr/bin/python3", "-c", "import aiosmtpd"], check=True, capture_output=True)
except subprocess.CalledProcessError:
    mxtest.skip("python3-aiosmtpd is not installed")

F = mxtest.Failures()
sink_port = mxtest.free_port()
gw = mxtest.Gateway(mxgate, routes={"example.test": "smtp:127.0.0.1:%d" % sink_port,
                                    "*": "maildir:MAILDIR"})
with open(gw.conf) as f:
    conf = f.read().replace("MAILDIR", gw.maildir)
with open(gw.conf, "w") as f:
    f.write(conf)
sink_dir = os.path.join(gw.dir, "sink")
sink = None


def start_sink():
    p = subprocess.Popen(["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "sink.py"),
                          str(sink_port), sink_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    p.stdout.readline()
    return p


def sink_messages():
    if not os.path.isdir(sink_dir):
        return []
    out = []
    for n in sorted(os.listdir(sink_dir)):
        if n.endswith(".eml"):
            with open(os.path.join(sink_dir, n), "rb") as f:
                out.append(f.read())
    return out


def send(mail_from, rcpts, mid):
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
        s.sendmail(mail_from, rcpts, "Subject: t\r\nMessage-ID: %s\r\n\r\nbody\r\n" % mid)


try:
    gw.start()
    # 1. downstream down -> deferred
    send("alice@local.test", ["bob@example.test"], "<deferred-1@t>")
    entry = None
    for _ in range(100):
        q = json.loads(gw.ctl("queue", "list", "--json") or "[]")
        items = q if isinstance(q, list) else q.get("messages", [])
        entry = next((m for m in items if m.get("attempts", 0) >= 1), None)
        if entry:
            break
        time.sleep(0.1)
    F.check(entry is not None, "message deferred in the queue with an attempt counted")
    if entry:
        F.check(any(k in entry for k in ("next_attempt", "next_attempt_time", "next")),
                "queue list shows the next attempt time: %s" % entry)
    F.check("deferred" in gw.log(), "log line says deferred")

    # 2. downstream up + flush -> delivered
    sink = start_sink()
    gw.ctl("queue", "flush")
    for _ in range(150):
        if any(b"<deferred-1@t>" in m for m in sink_messages()):
            break
        time.sleep(0.1)
    F.check(any(b"<deferred-1@t>" in m for m in sink_messages()), "delivered after flush")

    # 3. permanent 5xx -> DSN to the sender, in local.test's Maildir
    send("alice@local.test", ["reject-me@example.test", "carol@example.test"], "<bounce-1@t>")
    dsn = None
    for _ in range(150):
        for raw in gw.maildir_messages():
            m = email.message_from_bytes(raw)
            if m.get_content_type() == "multipart/report":
                dsn = m
        if dsn:
            break
        time.sleep(0.1)
    F.check(dsn is not None, "a DSN reached the sender")
    if dsn:
        F.check(dsn.get_param("report-type") == "delivery-status", "DSN is a delivery-status report")
        text = dsn.as_string()
        F.check("reject-me@example.test" in text and "5.1.1" in text,
                "DSN names the failed recipient and its status")
        F.check("carol@example.test" not in text.split("Final-Recipient")[1:].__str__(),
                "the delivered recipient is not reported as failed")
    F.check(any(b"<bounce-1@t>" in m and b"carol@example.test" in m for m in sink_messages()),
            "the accepted recipient got the message")

    # 4. null sender -> no DSN
    before = len(gw.maildir_messages())
    send("", ["reject-again@example.test"], "<nullsender-1@t>")
    time.sleep(3)
    F.check(len(gw.maildir_messages()) == before, "no DSN for a null sender")
    F.check(gw.stop() == 0, "clean stop")
finally:
    if sink:
        sink.stdin.close()
        try:
            sink.wait(10)
        except subprocess.TimeoutExpired:
            sink.kill()
    if F.items:
        print("---- mxgate log (tail) ----\n" + gw.log()[-6000:])
    gw.cleanup()
F.finish()
