#!/usr/bin/python3
"""Real SMTP clients against a running mxgate (kernel backend):
swaks (plain and STARTTLS), Python smtplib (pipelining, several recipients,
dot-stuffing, 8-bit, size limit), relay refusal for untrusted clients.
Every accepted message is checked byte for byte in the Maildir, under the
trace header mxgate adds; a message with too many Received headers is a loop."""
import email
import os
import smtplib
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest  # noqa: E402

mxgate = sys.argv[1]
mxtest.need("swaks")
mxtest.need("openssl")
F = mxtest.Failures()

gw = mxtest.Gateway(mxgate, trusted=["10.255.255.0/24"],
                    extra='smtp { max_message_size = 200000; tls { cert = "%s"; key = "%s"; } }')
try:
    # self-signed certificate for STARTTLS, made for this test only
    cert = os.path.join(gw.dir, "cert.pem")
    key = os.path.join(gw.dir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=mx.test.invalid"],
                   check=True, capture_output=True, timeout=60)
    with open(gw.conf) as f:
        conf = f.read() % (cert, key)
    with open(gw.conf, "w") as f:
        f.write(conf)
    gw.start()

    # 1. swaks, plain
    r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % gw.port, "--to", "user@example.test",
                        "--from", "sender@remote.invalid", "--header", "Message-ID: <swaks-plain@t>",
                        "--body", "plain body line"],
                       capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace")
    F.check(r.returncode == 0, "swaks plain exits 0")
    F.check("250 2.0.0" in out and "queued as" in out, "swaks plain gets 250 2.0.0 queued as")
    F.check("250-PIPELINING" in out and "250 STARTTLS" in out,
            "EHLO advertises PIPELINING and, last, STARTTLS")

    # 2. swaks with STARTTLS
    r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % gw.port, "--to", "user@example.test",
                        "--from", "tls@remote.invalid", "--tls", "--header",
                        "Message-ID: <swaks-tls@t>", "--body", "over tls"],
                       capture_output=True, timeout=60)
    out = r.stdout.decode(errors="replace")
    F.check(r.returncode == 0 and "TLS started" in out, "swaks --tls negotiates TLS")
    F.check("queued as" in out, "swaks --tls message queued")

    # 3. smtplib: pipelined transaction, two recipients, dot-stuffing, 8-bit body
    body = ("Subject: smtplib\r\nMessage-ID: <smtplib-1@t>\r\nFrom: a@remote.invalid\r\n"
            "To: x@example.test\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n"
            ".leading dot line\r\n..two dots\r\nk\u00e4se \u65e5\u672c\r\n.\r\nafter\r\n")
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
        s.ehlo("client.test")
        F.check(s.has_extn("pipelining") and s.has_extn("8bitmime") and s.has_extn("chunking"),
                "smtplib sees PIPELINING, 8BITMIME, CHUNKING")
        F.check(int(s.esmtp_features.get("size", "0")) == 200000, "SIZE advertises the limit")
        refused = s.sendmail("a@remote.invalid", ["x@example.test", "y@example.test"],
                             body.encode("utf-8"), mail_options=["BODY=8BITMIME"])
        F.check(refused == {}, "both recipients accepted")
        # size limit: declared SIZE over the maximum is refused at MAIL
        code, msg = s.mail("big@remote.invalid", ["SIZE=900000"])
        F.check(code == 552, "SIZE over max_message_size gets 552 (got %d %s)" % (code, msg))
        s.rset()
        # actual bytes over the limit: refused after the data, nothing stored
        big = "Subject: big\r\nMessage-ID: <too-big@t>\r\n\r\n" + ("x" * 998 + "\r\n") * 250
        # (sendmail() would declare SIZE= and be refused at MAIL: send undeclared)
        s.mail("big@remote.invalid")
        s.rcpt("x@example.test")
        code, msg = s.data(big)
        F.check(code == 552, "oversized message refused after the data with 552 (got %d %s)"
                % (code, msg))
        # unknown command and bad sequence
        code, _ = s.docmd("FOO")
        F.check(code == 500, "unknown command gets 500")
        code, _ = s.docmd("RCPT TO:<x@example.test>")
        F.check(code == 503, "RCPT before MAIL gets 503")

    # 4. loop detection: more Received headers than smtp.max_received (50) is a loop
    hops = "".join("Received: from hop%d.remote.invalid by relay.remote.invalid; "
                   "Tue, 24 Nov 2026 01:00:00 +0000\r\n" % i for i in range(51))
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("loop@remote.invalid")
        s.rcpt("x@example.test")
        code, msg = s.data(hops + "Subject: loop\r\nMessage-ID: <loop-51@t>\r\n\r\nround\r\n")
        F.check(code == 554 and msg.startswith(b"5.4.6"),
                "51 Received headers refused as a loop (got %d %s)" % (code, msg))
        s.mail("loop@remote.invalid")
        s.rcpt("x@example.test")
        code, msg = s.data(hops.split("\r\n", 1)[1] +
                           "Subject: loop\r\nMessage-ID: <loop-50@t>\r\n\r\nround\r\n")
        F.check(code == 250, "50 Received headers accepted (got %d %s)" % (code, msg))

    # 5. relay refusal: 127.0.0.1 is not trusted here, other.test is not a relay domain
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("a@remote.invalid")
        for rcpt in ["victim@other.test", "victim%other.test@example.test",
                     "other.test!victim@example.test", "@example.test:victim@other.test",
                     '"victim@other.test"@example.test', "victim@[192.0.2.1]"]:
            code, msg = s.rcpt(rcpt)
            F.check(code == 554 or (code >= 500 and b"5.7.1" in msg) or code in (501, 553),
                    "relay attempt %s refused (got %d %s)" % (rcpt, code, msg))
        code, _ = s.rcpt("ok@example.test")
        F.check(code == 250, "relay domain recipient accepted")
        s.rset()

    msgs = gw.wait_maildir(5, timeout=30)
    byid = {}
    for raw in msgs:
        m = email.message_from_bytes(raw)
        byid.setdefault((m["Message-ID"] or "").strip(), []).append(raw)
    # (swaks writes its own Message-Id too, so look for ours in the raw bytes)
    F.check(any(b"<swaks-plain@t>" in m for m in msgs) and any(b"<swaks-tls@t>" in m for m in msgs),
            "swaks messages delivered")
    F.check(len(byid.get("<smtplib-1@t>", [])) == 2, "smtplib message delivered to 2 recipients")
    F.check("<too-big@t>" not in byid, "oversized message not delivered")
    F.check("<loop-51@t>" not in byid and len(byid.get("<loop-50@t>", [])) == 1,
            "the looping message is not delivered, the one under the limit is")
    # the trace header (RFC 5321 4.4) on top of every message: HELO, client
    # address, protocol (ESMTPS over TLS), session id, the single recipient, date
    import re
    rx = re.compile(rb"^Received: from (\S+) \(unknown \[127\.0\.0\.1\]\)\r?\n"
                    rb"\tby (\S+) \(mxgate\) with (E?SMTPS?) id ([0-9A-F]+)"
                    rb"(?:\r?\n\t\(using (TLSv[0-9.]+) with cipher \S+\))?"
                    rb"(?:\r?\n\tfor <([^>]+)>)?; \w{3}, \d{2} \w{3} \d{4} \d\d:\d\d:\d\d [-+]\d{4}\r?\n")
    for raw in msgs:
        top = raw.split(b"\nReceived: ", 1)
        trace = rx.match(b"Received: " + top[1]) if len(top) == 2 else None
        mid = re.search(rb"(?im)^message-id: *(<[^>]*>)", raw)
        mid = mid.group(1).decode() if mid else "?"
        F.check(trace is not None, "%s starts with mxgate's Received header" % mid)
        if not trace:
            continue
        if b"<swaks-tls@t>" in raw:
            F.check(trace.group(3) == b"ESMTPS" and trace.group(5) is not None,
                    "over STARTTLS: with ESMTPS and the TLS version (%r)" % trace.group(0))
        elif mid == "<smtplib-1@t>":
            F.check(trace.group(1) == b"client.test" and trace.group(3) == b"ESMTP" and
                    trace.group(6) is None, "smtplib: HELO name, ESMTP, no 'for' with two "
                    "recipients (%r)" % trace.group(0))
        elif mid == "<loop-50@t>":
            F.check(trace.group(6) == b"x@example.test", "one recipient: 'for <x@example.test>'")
    if byid.get("<smtplib-1@t>"):
        raw = byid["<smtplib-1@t>"][0]
        sent = body.encode("utf-8")
        F.check(raw.endswith(sent.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n")) or
                raw.endswith(sent.split(b"\r\n\r\n", 1)[1]),
                "body arrives byte-exact (dot-unstuffed, 8-bit intact)")
    rc = gw.stop()
    F.check(rc == 0, "mxgate stops cleanly on SIGTERM")
finally:
    if F.items:
        print("---- mxgate log ----\n" + gw.log()[-8000:])
    gw.cleanup()
F.finish()
