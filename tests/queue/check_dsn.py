#!/usr/bin/python3
"""check_dsn.py - parse the DSNs written by test_dsn --write with Python's
email package and check the RFC 3464 structure: multipart/report with
report-type=delivery-status, the delivery-status fields per recipient, and
the original attached per RET (message/rfc822 or text/rfc822-headers)."""
import email
import email.utils
import subprocess
import sys
import tempfile


def fail(msg):
    print("FAIL:", msg)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def parse(path):
    with open(path, "rb") as f:
        raw = f.read()
    for line in raw.split(b"\r\n")[:-1]:
        check(b"\n" not in line and len(line) <= 998, "line form in %s" % path)
    return email.message_from_bytes(raw)


def common(m, name, delayed):
    check(m.get_content_type() == "multipart/report", name + ": content type")
    check(m.get_param("report-type") == "delivery-status", name + ": report-type")
    check(m["From"].startswith("MAILER-DAEMON@gw.example.org"), name + ": From")
    check(m["To"] == "<alice@example.com>", name + ": To")
    check(m["Auto-Submitted"] == "auto-replied", name + ": Auto-Submitted")
    check(m["Message-ID"].startswith("<") and m["Message-ID"].endswith("@gw.example.org>"),
          name + ": Message-ID")
    check(email.utils.parsedate_to_datetime(m["Date"]).timestamp() == 1700000100,
          name + ": Date")
    parts = m.get_payload()
    check(len(parts) == 3, name + ": three parts")
    check(parts[0].get_content_type() == "text/plain", name + ": human part")
    text = parts[0].get_payload(decode=True).decode()
    check("bob@dest.test" in text and "carol@dest.test" in text, name + ": human text")
    ds = parts[1]
    check(ds.get_content_type() == "message/delivery-status", name + ": delivery-status")
    blocks = ds.get_payload()
    check(len(blocks) == 3, name + ": per-message + 2 recipient blocks, got %d" % len(blocks))
    pm = blocks[0]
    check(pm["Reporting-MTA"] == "dns; gw.example.org", name + ": Reporting-MTA")
    check(pm["Original-Envelope-Id"] == "ENV-42", name + ": ENVID")
    check(email.utils.parsedate_to_datetime(pm["Arrival-Date"]).timestamp() == 1700000000,
          name + ": Arrival-Date")
    r1, r2 = blocks[1], blocks[2]
    check(r1["Final-Recipient"] == "rfc822; bob@dest.test", name + ": Final-Recipient 1")
    check(r1["Original-Recipient"] == "rfc822; Bob@Dest.Test", name + ": Original-Recipient")
    check(r1["Action"] == ("delayed" if delayed else "failed"), name + ": Action 1")
    check(r1["Status"] == ("4.2.0" if delayed else "5.1.1"), name + ": Status 1")
    check(r1["Remote-MTA"] == "dns; 127.0.0.1", name + ": Remote-MTA")
    check(r1["Diagnostic-Code"].startswith("smtp; %s" % ("451 4.2.0" if delayed else "550 5.1.1")),
          name + ": Diagnostic-Code 1")
    check(r2["Final-Recipient"] == "rfc822; carol@dest.test", name + ": Final-Recipient 2")
    check(r2["Original-Recipient"] is None, name + ": no ORCPT 2")
    check(r2["Remote-MTA"] is None, name + ": no Remote-MTA 2")
    check("Connection refused" in r2["Diagnostic-Code"], name + ": Diagnostic-Code 2")
    return parts[2]


def main():
    exe = sys.argv[1]
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([exe, "--write", d], check=True, timeout=30)
        # RET=FULL: the whole original as message/rfc822
        att = common(parse(d + "/full.eml"), "full", False)
        check(att.get_content_type() == "message/rfc822", "full: attachment type")
        inner = att.get_payload()[0]
        check(inner["Subject"] == "quarterly report", "full: inner Subject")
        check(inner["Message-ID"] == "<orig-123@example.com>", "full: inner Message-ID")
        check("only RET=FULL returns" in inner.get_payload(), "full: inner body")
        # RET=HDRS and no RET: headers only
        for name in ("hdrs", "default"):
            att = common(parse(d + "/%s.eml" % name), name, False)
            check(att.get_content_type() == "text/rfc822-headers", name + ": attachment type")
            txt = att.get_payload()
            check("Subject: quarterly report" in txt, name + ": headers present")
            check("only RET=FULL returns" not in txt, name + ": no body")
        m = parse(d + "/delayed.eml")
        common(m, "delayed", True)
        check(m["Subject"].startswith("Delayed Mail"), "delayed: Subject")
    print("ok: 4 DSNs parsed back and checked")


if __name__ == "__main__":
    main()
