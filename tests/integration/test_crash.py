#!/usr/bin/python3
"""No acknowledged message is ever lost: clients send continuously while the
gateway is killed with SIGKILL at random moments (seeded) and restarted.
At the end every Message-ID that got a 250 must be in the Maildir."""
import os
import random
import smtplib
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest  # noqa: E402

mxgate = sys.argv[1]
rounds = int(os.environ.get("MX_CRASH_ROUNDS", "8"))
seed = int(os.environ.get("MX_CRASH_SEED", "20261123"))
rng = random.Random(seed)
F = mxtest.Failures()
gw = mxtest.Gateway(mxgate)
acked = set()
attempted = 0
lock = threading.Lock()
stop = threading.Event()


def client(cid):
    global attempted
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", gw.port, timeout=5) as s:
                while not stop.is_set():
                    n += 1
                    mid = "<crash-%d-%d-%d@t>" % (seed, cid, n)
                    msg = ("From: c%d@remote.invalid\r\nTo: u@example.test\r\nSubject: crash %d\r\n"
                           "Message-ID: %s\r\n\r\n" % (cid, n, mid)) + ("line %d\r\n" % n) * 40
                    with lock:
                        attempted += 1
                    s.sendmail("c%d@remote.invalid" % cid, ["u@example.test"], msg)
                    with lock:
                        acked.add(mid)
        except (OSError, smtplib.SMTPException):
            time.sleep(0.05)  # the gateway is down or was killed: retry


try:
    gw.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for r in range(rounds):
        time.sleep(rng.uniform(0.2, 1.2))
        gw.kill9()
        time.sleep(rng.uniform(0.0, 0.2))
        gw.start()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    print("attempted %d, acknowledged %d, %d kills" % (attempted, len(acked), rounds))
    F.check(len(acked) > 50, "clients got enough 250s to make the test meaningful")
    deadline = time.monotonic() + 60
    missing = acked
    while time.monotonic() < deadline:
        got = mxtest.message_ids(gw.maildir_messages())
        missing = acked - got
        if not missing:
            break
        time.sleep(0.5)
    F.check(not missing, "every acknowledged message delivered (%d missing: %s)"
            % (len(missing), sorted(missing)[:5]))
    F.check(gw.stop() == 0, "clean stop after the crash rounds")
finally:
    stop.set()
    if F.items:
        print("---- mxgate log (tail) ----\n" + gw.log()[-6000:])
    gw.cleanup()
F.finish()
