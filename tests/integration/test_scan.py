#!/usr/bin/python3
"""Scanning end to end: mxgate loads Debian's stock SpamAssassin rules plus
rules/default.rules; GTUBE is tagged spam (score >= 1000), the non-spam
sample is clean, forged X-Spam-* headers from outside are removed, and a
restart loads the compiled Hyperscan databases from the cache."""
import email
import json
import os
import smtplib
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest  # noqa: E402

mxgate = sys.argv[1]
root = mxtest.ROOT
samples = os.path.join(root, "..", "shared", "corpus", "sa-samples")
if not os.path.isdir("/usr/share/spamassassin"):
    mxtest.skip("spamassassin rules are not installed")
rules = '[ "/usr/share/spamassassin", "%s" ]' % os.path.join(root, "rules", "default.rules")
F = mxtest.Failures()
gw = mxtest.Gateway(mxgate, extra="scan { rules = %s; spam_threshold = 5.0; }" % rules)
try:
    gw.start(timeout=240)
    F.check("compiled in" in gw.log(), "first start compiles the rules")
    with open(os.path.join(samples, "sample-spam.txt"), "rb") as f:
        spam = f.read()
    with open(os.path.join(samples, "sample-nonspam.txt"), "rb") as f:
        ham = f.read()
    forged = (b"X-Spam-Status: No, score=-100\r\nX-Spam-Score: -100\r\nSubject: forged\r\n"
              b"Message-ID: <forged@t>\r\n\r\nXJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-"
              b"UBE-TEST-EMAIL*C.34X\r\n")
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=60) as s:
        s.sendmail("a@remote.invalid", ["spam@example.test"], spam.replace(b"\n", b"\r\n")
                   if b"\r\n" not in spam else spam)
        s.sendmail("a@remote.invalid", ["ham@example.test"], ham.replace(b"\n", b"\r\n")
                   if b"\r\n" not in ham else ham)
        s.sendmail("a@remote.invalid", ["forged@example.test"], forged)
    msgs = gw.wait_maildir(3, timeout=60)
    by_rcpt = {}
    for raw in msgs:
        m = email.message_from_bytes(raw)
        by_rcpt[m["Delivered-To"]] = m
    sp = by_rcpt.get("spam@example.test")
    F.check(sp is not None and sp["X-Spam-Status"].startswith("Yes")
            and float(sp["X-Spam-Score"]) >= 1000 and "GTUBE" in sp["X-Spam-Status"],
            "GTUBE sample tagged spam with score >= 1000")
    hm = by_rcpt.get("ham@example.test")
    F.check(hm is not None and hm["X-Spam-Status"].startswith("No"), "non-spam sample is clean")
    fg = by_rcpt.get("forged@example.test")
    F.check(fg is not None and len(fg.get_all("X-Spam-Status")) == 1
            and fg["X-Spam-Status"].startswith("Yes") and "-100" not in fg.as_string(),
            "forged verdict headers removed, ours present")
    # rule hits by name: GTUBE hit twice (the sample and the forged message)
    st = json.loads(gw.ctl("stats", "--json"))
    top = {r["rule"]: r["hits"] for r in st.get("top_rules", [])}
    F.check(top.get("GTUBE") == 2, "stats: top_rules has GTUBE with 2 hits (got %s)" % top.get("GTUBE"))
    F.check(all(n and not n.startswith("__") for n in top), "stats: only reported rules counted")
    F.check("\nrule GTUBE hits 2\n" in gw.ctl("stats"), "mxctl stats lists GTUBE")
    F.check(gw.stop() == 0, "clean stop")
    gw.start(timeout=120)
    F.check("loaded from cache" in gw.log(), "restart loads the rule databases from the cache")
    F.check(gw.stop() == 0, "clean stop after restart")
finally:
    if F.items:
        print("---- mxgate log (tail) ----\n" + gw.log()[-4000:])
    gw.cleanup()
F.finish()
