#!/usr/bin/python3
"""Redirect and BCC actions end to end: Python smtplib sends through a running
mxgate whose every route leads to an aiosmtpd downstream (sink.py); the test
reads which envelope recipients each message reached there.

Scanning (a small rule file) and anti-virus (the EICAR signature) are both on,
so each delivered copy must carry the verdict headers and X-Virus-Status.
Policy under test: spam (GTUBE) is redirected to spamtrap@corp.example (for
vip@example.test to its own vip-trap@corp.example); every message is copied
to archive@corp.example; other.test tags spam instead and has no copy;
legal@example.test gets a copy of its spam only, to legal-archive@corp.example.
Usage: test_actions.py MXGATE"""
import email
import os
import smtplib
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest  # noqa: E402

mxgate = sys.argv[1]
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
F = mxtest.Failures()

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
d = tempfile.mkdtemp(prefix="mxgate-actions-")
avdb = os.path.join(d, "avdb")
os.mkdir(avdb)
with open(os.path.join(avdb, "test.ndb"), "w") as f:
    f.write("Eicar-Test-Signature:0:*:" + EICAR.hex() + "\n")
rules = os.path.join(d, "t.rules")
with open(rules, "w") as f:
    f.write("body GTUBE /XJS\\*C4JDBQADN1\\.NSBN3\\*2IDNEN\\*GTUBE/\nscore GTUBE 1000\n")
sink_port = mxtest.free_port()
sink_dir = os.path.join(d, "sink")
gw = mxtest.Gateway(mxgate, keep_dir=d, relay_domains=["example.test", "other.test"],
                    routes={"*": "smtp:127.0.0.1:%d" % sink_port}, extra="""
scan { rules = [ "%s" ]; clamav { enabled = true; database = "%s"; } }
queue { retry_first = 1s; }
policy {
  spam_action = "redirect"; redirect_to = "spamtrap@corp.example";
  bcc = "archive@corp.example"; bcc_when = "always";
  domains { "other.test" { spam_action = "tag"; bcc = ""; } }
  users {
    "vip@example.test" { redirect_to = "vip-trap@corp.example"; }
    "legal@example.test" { bcc = "legal-archive@corp.example"; bcc_when = "spam"; }
  }
}
""" % (rules, avdb))

sink = subprocess.Popen(["/usr/bin/python3", os.path.join(os.path.dirname(__file__), "sink.py"),
                         str(sink_port), sink_dir], stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE)


def received(headers=None):
    """Message-ID -> set of envelope recipients it reached downstream; with a
    dict for headers, also Message-ID -> its X-Virus-Status."""
    out = {}
    if not os.path.isdir(sink_dir):
        return out
    for n in sorted(os.listdir(sink_dir)):
        if not n.endswith(".eml"):
            continue
        with open(os.path.join(sink_dir, n), "rb") as f:
            raw = f.read()
        m = email.message_from_bytes(raw)
        mid = (m["Message-ID"] or "").strip()
        rc = {a for a in (m["X-Envelope-To"] or "").split(",") if a}
        out.setdefault(mid, set()).update(rc)
        if headers is not None:
            headers[mid] = m["X-Virus-Status"]
    return out


CASES = [
    # (id, recipients, spam, recipients expected downstream)
    ("clean", ["user@example.test"], False, {"user@example.test", "archive@corp.example"}),
    ("spam", ["user@example.test"], True, {"spamtrap@corp.example", "archive@corp.example"}),
    ("spam-vip", ["vip@example.test", "user@example.test"], True,
     {"vip-trap@corp.example", "spamtrap@corp.example", "archive@corp.example"}),
    ("spam-other", ["user@other.test"], True, {"user@other.test"}),
    ("clean-legal", ["legal@example.test"], False, {"legal@example.test"}),
    ("spam-legal", ["legal@example.test"], True,
     {"spamtrap@corp.example", "legal-archive@corp.example"}),
    # the strictest recipient decides: redirect; only example.test's own target and copy
    ("spam-mixed", ["user@other.test", "user@example.test"], True,
     {"spamtrap@corp.example", "archive@corp.example"}),
]

try:
    F.check(sink.stdout.readline().strip() == b"sink ready", "aiosmtpd downstream started")
    gw.start()
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.example", timeout=30) as s:
        for mid, rcpts, spam, _ in CASES:
            body = (b"From: a@remote.invalid\r\nTo: " + ", ".join(rcpts).encode() +
                    b"\r\nSubject: " + mid.encode() + b"\r\nMessage-ID: <" + mid.encode() +
                    b"@t>\r\n\r\n" + (GTUBE if spam else b"minutes attached") + b"\r\n")
            refused = s.sendmail("a@remote.invalid", rcpts, body)
            F.check(refused == {}, "%s: accepted for %s" % (mid, rcpts))
    want = {"<%s@t>" % mid: exp for mid, _, _, exp in CASES}
    deadline = time.monotonic() + 40
    got = {}
    while time.monotonic() < deadline:
        got = received()
        if all(got.get(k, set()) >= v for k, v in want.items()):
            break
        time.sleep(0.2)
    time.sleep(0.5)  # anything extra would have arrived by now
    avs = {}
    got = received(avs)
    # scanned and AV-checked: the AV status goes with the verdict headers
    F.check(avs and all(v == "Clean" for v in avs.values()),
            "every delivered copy carries X-Virus-Status: Clean: %r" % avs)
    for mid, rcpts, spam, exp in CASES:
        F.check(got.get("<%s@t>" % mid) == exp, "%s: downstream recipients %r (want %r)"
                % (mid, sorted(got.get("<%s@t>" % mid, set())), sorted(exp)))
    log = gw.log()
    F.check("policy: spam, redirected to <spamtrap@corp.example> instead of 1 recipient(s)"
            in log, "redirect logged")
    F.check("policy: BCC copy to <archive@corp.example> (bcc_when always, for "
            "<user@example.test>)" in log, "BCC logged")
    F.check("policy: BCC copy to <legal-archive@corp.example> (bcc_when spam, for "
            "<legal@example.test>)" in log, "verdict-bound BCC logged")
    F.check(gw.stop() == 0, "clean stop")
finally:
    sink.stdin.close()
    try:
        sink.wait(10)
    except subprocess.TimeoutExpired:
        sink.kill()
        sink.wait(5)
    if F.items:
        print("---- mxgate log (tail) ----\n" + gw.log()[-5000:])
    gw.cleanup()
F.finish()
