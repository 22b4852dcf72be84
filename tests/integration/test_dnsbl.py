#!/usr/bin/python3
"""test_dnsbl - DNS checks against a real DNS server (unbound) on loopback.

The test starts unbound with local zones: a DNSBL zone listing 127.0.0.2,
MX and A records for a good sender domain, NXDOMAIN for a bad one. mxgate
uses it as dns.servers. Clients connect from second loopback addresses:
  - from 127.0.0.2 (listed): MAIL gets 554 5.7.1 "listed at zen.example.test",
    and a pipelined MAIL+RCPT+DATA gets its three replies in order;
  - from 127.0.0.3 (not listed): the message is accepted and delivered;
  - a sender at the NXDOMAIN domain: 550 5.1.8.
URIBL on body URIs (a gateway with a small rule file, so the scanner
extracts the URIs): a listed domain in a plain-text link and in an HTML
href, and a listed IP-literal link, get 550 5.7.1 at end of data naming
the domain and the list; a domain on a score list is delivered with the
list's score and URIBL_ rule in X-Spam-Rules (a co.uk host reduced to its
registered domain); a clean message and one whose list REFUSEs are
delivered; uribl.max_queries caps the lookups; with a DNS server that
never answers, the message is delivered after uribl.timeout.
Usage: test_dnsbl.py MXGATE
"""
import os
import email
import json
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest  # noqa: E402


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_unbound(d, port):
    conf = os.path.join(d, "unbound.conf")
    with open(conf, "w") as f:
        f.write("""server:
  interface: 127.0.0.1
  port: %d
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "%s"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  local-zone: "test." static
  local-zone: "zen.example.test." static
  local-data: "2.0.0.127.zen.example.test. 60 IN A 127.0.0.2"
  local-data: "2.0.0.127.zen.example.test. 60 IN TXT \\"listed\\""
  local-zone: "s1.example.test." static
  local-data: "4.0.0.127.s1.example.test. 60 IN A 127.0.0.2"
  local-data: "5.0.0.127.s1.example.test. 60 IN A 127.0.0.2"
  local-zone: "s2.example.test." static
  local-data: "4.0.0.127.s2.example.test. 60 IN A 127.0.0.2"
  local-zone: "uribl.example.test." static
  local-data: "spam.test.uribl.example.test. 60 IN A 127.0.0.2"
  local-data: "2.2.0.192.uribl.example.test. 60 IN A 127.0.0.2"
  local-zone: "urisc.example.test." static
  local-data: "scored.test.urisc.example.test. 60 IN A 127.0.0.2"
  local-data: "shop.co.uk.urisc.example.test. 60 IN A 127.0.0.2"
  local-zone: "urifail.example.test." refuse
  local-zone: "spam.test." static
  local-data: "spam.test. 60 IN A 192.0.2.20"
  local-zone: "good.test." static
  local-data: "good.test. 60 IN MX 10 mx.good.test."
  local-data: "mx.good.test. 60 IN A 192.0.2.10"
  local-zone: "bad.test." static
remote-control:
  control-enable: no
""" % (port, d))
    proc = subprocess.Popen(["unbound", "-d", "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    # ready when it answers a query for the listed address
    q = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" +
         b"".join(bytes([len(p)]) + p.encode() for p in "2.0.0.127.zen.example.test".split(".")) +
         b"\x00\x00\x01\x00\x01")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("unbound exited: " + proc.stderr.read().decode())
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.3)
        try:
            s.sendto(q, ("127.0.0.1", port))
            a, _ = s.recvfrom(512)
            if a[:2] == b"\x12\x34" and a[3] & 0x0f == 0 and a[6:8] != b"\x00\x00":
                return proc
        except OSError:
            pass
        finally:
            s.close()
        time.sleep(0.1)
    proc.kill()
    proc.wait(5)
    raise RuntimeError("unbound did not answer")


def raw_session(port, src, lines, expect_replies, timeout=10):
    """Send all lines in one write after EHLO; return the replies that follow, in order."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(src, 0))
    f = s.makefile("rb")

    def reply():
        out = []
        while True:
            ln = f.readline()
            if not ln:
                return out
            out.append(ln.decode().rstrip("\r\n"))
            if len(ln) >= 4 and ln[3:4] == b" ":
                return out

    reply()  # greeting
    s.sendall(b"EHLO client.test\r\n")
    reply()
    s.sendall(b"".join(l.encode() + b"\r\n" for l in lines))
    got = [reply()[-1] for _ in range(expect_replies)]
    s.close()
    return got


RULES = "body T_NEVER /this text never appears in a test message/\nscore T_NEVER 1\n"


def uri_gateway(mxgate, dns_extra, uribl):
    d = tempfile.mkdtemp(prefix="mxgate-uribl-")
    rules = os.path.join(d, "t.rules")
    with open(rules, "w") as f:
        f.write(RULES)
    return mxtest.Gateway(mxgate, trusted=["127.0.0.1/32"], keep_dir=d, extra="""
%s
scan { rules = [ "%s" ]; spam_threshold = 5.0; }
uribl { %s }
""" % (dns_extra, rules, uribl))


def send(port, sender, mid, body, ctype=b"text/plain", helo="client.test"):
    """One message from 127.0.0.3; returns (code, text) of the end of data."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.3", 0)) as c:
        c.ehlo(helo)
        code, msg = c.mail(sender)
        if code != 250:
            return code, msg
        c.rcpt("x@example.test")
        return c.data(b"From: a@good.test\r\nTo: x@example.test\r\nSubject: uri test\r\n"
                      b"Content-Type: " + ctype + b"; charset=us-ascii\r\nMessage-ID: <" +
                      mid + b"@test>\r\n\r\n" + body + b"\r\n")


def uribl_body(mxgate, dns_port, fails):
    gw = uri_gateway(mxgate, 'dns { servers = [ "127.0.0.1:%d" ]; timeout = 1; tries = 2; }'
                     % dns_port,
                     'lists = [ "uribl.example.test reject", "urisc.example.test score=4", '
                     '"urifail.example.test reject" ]; max_queries = 12; timeout = 5s;')
    try:
        gw.start()
        # a listed domain in a plain-text link
        code, msg = send(gw.port, "a@good.test", b"uri-plain",
                         b"Cheap pills at http://www.spam.test/offer?id=1 today")
        fails.check(code == 550 and msg == b"5.7.1 Message rejected; URI domain spam.test listed "
                    b"at uribl.example.test", "listed URI in plain text: %d %r" % (code, msg))
        # ... in an HTML href (a subdomain of it, the link text says otherwise)
        code, msg = send(gw.port, "a@good.test", b"uri-html",
                         b"<html><body><p>Your <a href=\"https://login.shop.spam.test/x\">"
                         b"bank</a></p></body></html>", ctype=b"text/html")
        fails.check(code == 550 and b"URI domain spam.test listed at uribl.example.test" in msg,
                    "listed URI in an HTML href: %d %r" % (code, msg))
        # an IP-literal link, queried reversed
        code, msg = send(gw.port, "a@good.test", b"uri-ip",
                         b"<a href='http://192.0.2.2:8080/win'>win</a>", ctype=b"text/html")
        fails.check(code == 550 and b"URI domain 192.0.2.2 listed at uribl.example.test" in msg,
                    "listed IP-literal URI: %d %r" % (code, msg))
        # a score list: delivered, its score and rule in the verdict headers
        code, msg = send(gw.port, "a@good.test", b"uri-score",
                         b"see http://a.scored.test/ and http://b.scored.test/ and "
                         b"www.deals.shop.co.uk/now")
        fails.check(code == 250, "URI on a score list: accepted (%d %r)" % (code, msg))
        # a clean message (its list on REFUSE is a DNS failure: not listed, logged)
        code, msg = send(gw.port, "a@good.test", b"uri-clean",
                         b"Minutes at http://www.good.test/minutes and mailto:bob@good.test")
        fails.check(code == 250, "clean URIs: accepted (%d %r)" % (code, msg))
        # more names than uribl.max_queries allows: 12 queries / 3 lists = 4 names asked
        many = b" ".join(b"http://host%d.d%d.test/" % (i, i) for i in range(10))
        code, msg = send(gw.port, "a@good.test", b"uri-many", many + b" http://www.spam.test/")
        fails.check(code == 250, "the listed 11th name is past the cap: accepted (%d %r)"
                    % (code, msg))
        msgs = gw.wait_maildir(3, timeout=20)
        by_id = {}
        for raw in msgs:
            m = email.message_from_bytes(raw)
            by_id[(m["Message-ID"] or "").strip()] = m
        fails.check(set(by_id) == {"<uri-score@test>", "<uri-clean@test>", "<uri-many@test>"},
                    "delivered exactly the unlisted ones: %r" % sorted(by_id))
        sc = by_id.get("<uri-score@test>")
        rules = sc["X-Spam-Rules"] if sc is not None else ""
        fails.check(sc is not None and "URIBL_URISC_EXAMPLE_TEST" in rules and
                    "score=4.0" in sc["X-Spam-Status"],
                    "score list hit in the verdict: %r / %r" %
                    (rules, sc["X-Spam-Status"] if sc is not None else None))
        cl = by_id.get("<uri-clean@test>")
        fails.check(cl is not None and "URIBL" not in (cl["X-Spam-Status"] or ""),
                    "clean message has no URIBL hit")
        log = gw.log()
        fails.check("URI domain scored.test listed at urisc.example.test" in log,
                    "log names the score-list listing")
        fails.check("URI domain shop.co.uk listed at urisc.example.test" in log,
                    "www.deals.shop.co.uk reduced to shop.co.uk")
        fails.check("urifail.example.test: no answer" in log,
                    "the REFUSEd list's failure is logged")
        fails.check("uribl.max_queries (12) reached after 4 names" in log,
                    "max_queries caps the lookups")
        fails.check("URIBL: 3 URIs, 2 names, 6 queries" in log,
                    "duplicate domains asked once (a/b.scored.test)")
        # console counters: 5 listings (spam.test twice, 192.0.2.2, scored.test,
        # shop.co.uk); every message asked the REFUSEd list at least once
        st = json.loads(gw.ctl("stats", "--json"))["counters"]
        fails.check(st.get("uribl_listed") == 5, "stats: uribl_listed == 5 (%s)"
                    % st.get("uribl_listed"))
        fails.check(st.get("dns_list_failed", 0) >= 6, "stats: dns_list_failed >= 6 (%s)"
                    % st.get("dns_list_failed"))
        fails.check(st.get("dnsbl_listed") == 0, "stats: no DNSBL listing (%s)"
                    % st.get("dnsbl_listed"))
        fails.check(gw.stop() == 0, "URIBL gateway: clean stop")
    finally:
        gw.stop()
    if not fails.items:
        gw.cleanup()

    # a DNS server that never answers: the message waits uribl.timeout, then is delivered
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    gw = uri_gateway(mxgate, 'dns { servers = [ "127.0.0.1:%d" ]; timeout = 10; tries = 1; }'
                     % dead.getsockname()[1],
                     'lists = [ "uribl.example.test reject" ]; timeout = 1s;')
    try:
        gw.start()
        t0 = time.monotonic()
        # null sender and a dotless HELO: no MAIL-time URIBL lookups to wait for
        code, msg = send(gw.port, "", b"uri-timeout", b"link http://www.spam.test/ here",
                         helo="client")
        took = time.monotonic() - t0
        fails.check(code == 250, "URIBL timeout: delivered (%d %r)" % (code, msg))
        fails.check(0.9 < took < 5, "URIBL timeout: answered in %.2f s (budget 1 s, DNS 10 s)"
                    % took)
        print("measured: end of data with a dead DNS server and uribl.timeout = 1s: %.2f s"
              % took)
        msgs = gw.wait_maildir(1, timeout=20)
        fails.check("<uri-timeout@test>" in mxtest.message_ids(msgs), "URIBL timeout: delivered")
        fails.check("queries unanswered after" in gw.log(), "URIBL timeout: logged")
        # its queries are still out at the resolver: stopping must not trip on them
        fails.check(gw.stop() == 0, "URIBL timeout gateway: clean stop")
    finally:
        gw.stop()
        dead.close()
    if not fails.items:
        gw.cleanup()


def main():
    mxtest.need("unbound")
    mxgate = sys.argv[1]
    port = free_udp_port()
    gw = None
    ub = None
    fails = mxtest.Failures()
    try:
        gw = mxtest.Gateway(mxgate, trusted=["127.0.0.1/32"], extra="""
dns { servers = [ "127.0.0.1:%d" ]; timeout = 1; tries = 2; }
dnsbl { lists = [ "zen.example.test=127.0.0.2 reject", "s1.example.test score=3",
                  "s2.example.test score=3" ]; threshold = 5; }
uribl { lists = [ "uribl.example.test reject" ]; }
sender_domain_check = "reject";
logical_ip = true;
""" % port)
        ub = start_unbound(gw.dir, port)
        gw.start()

        # listed client: 554 at MAIL, naming the list
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=15, source_address=("127.0.0.2", 0)) as c:
            c.ehlo("client.test")
            code, msg = c.mail("a@good.test")
            fails.check(code == 554, "listed client: MAIL answered %d (want 554)" % code)
            fails.check(b"5.7.1" in msg and b"listed at zen.example.test" in msg,
                        "listed client: reply names the list: %r" % msg)

        # pipelined from the listed client: three replies, in order
        got = raw_session(gw.port, "127.0.0.2",
                          ["MAIL FROM:<a@good.test>", "RCPT TO:<x@example.test>", "DATA"], 3)
        fails.check(len(got) == 3 and got[0].startswith("554 5.7.1") and
                    got[1].startswith("503") and got[2].startswith("503"),
                    "pipelined MAIL/RCPT/DATA from a listed client: %r" % got)

        # score lists: 127.0.0.4 on both (3 + 3 >= 5) refused, 127.0.0.5 on one (3) accepted
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=15, source_address=("127.0.0.4", 0)) as c:
            c.ehlo("client.test")
            code, msg = c.mail("a@good.test")
            fails.check(code == 554 and b"listed at DNS lists (score)" in msg,
                        "scores add up to the threshold: %d %r" % (code, msg))
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=15, source_address=("127.0.0.5", 0)) as c:
            c.ehlo("client.test")
            code, msg = c.mail("a@good.test")
            fails.check(code == 250, "score below the threshold: %d %r" % (code, msg))

        # unlisted client: accepted and delivered
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=15, source_address=("127.0.0.3", 0)) as c:
            c.ehlo("client.test")
            refused = c.sendmail("a@good.test", ["x@example.test"],
                                 b"Subject: dnsbl ok\r\nMessage-ID: <dnsbl-ok@test>\r\n\r\nhi\r\n")
            fails.check(refused == {}, "unlisted client: accepted")
        msgs = gw.wait_maildir(1, timeout=20)
        fails.check("<dnsbl-ok@test>" in mxtest.message_ids(msgs), "unlisted client: delivered")

        # URIBL on the sender's domain and the HELO name
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=15, source_address=("127.0.0.3", 0)) as c:
            c.ehlo("client.test")
            code, msg = c.mail("a@spam.test")
            fails.check(code == 554 and b"spam.test listed at uribl.example.test" in msg,
                        "URIBL-listed sender domain: %d %r" % (code, msg))
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=15, source_address=("127.0.0.3", 0)) as c:
            c.ehlo("spam.test")
            code, msg = c.mail("a@good.test")
            fails.check(code == 554 and msg.endswith(b"<spam.test>: Helo command rejected: "
                                                     b"spam.test listed at uribl.example.test"),
                        "URIBL-listed HELO name: %d %r" % (code, msg))

        # unknown sender domain (NXDOMAIN, no MX, no A)
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=15, source_address=("127.0.0.3", 0)) as c:
            c.ehlo("client.test")
            code, msg = c.mail("a@bad.test")
            fails.check(code == 550 and b"5.1.8" in msg,
                        "unknown sender domain: %d %r (want 550 5.1.8)" % (code, msg))
            code, msg = c.mail("b@good.test")
            fails.check(code == 250, "known sender domain after it: %d" % code)
        # logical IP: an unlisted client relaying a message whose first external hop is listed
        front = (b"Received: from inner (inner [127.0.0.1]) by front.test; now\r\n"
                 b"Received: from bot (bot [127.0.0.2]) by inner; now\r\n")
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=15, source_address=("127.0.0.3", 0)) as c:
            c.ehlo("client.test")
            c.mail("a@good.test")
            c.rcpt("x@example.test")
            code, msg = c.data(front + b"Subject: relayed\r\nMessage-ID: <logical-bad@test>\r\n"
                               b"\r\nhi\r\n")
            fails.check(code == 554 and b"originating client [127.0.0.2] listed at "
                        b"zen.example.test" in msg,
                        "logical IP listed: end of data %d %r (want 554)" % (code, msg))
            code, msg = c.mail("a@good.test")
            fails.check(code == 250, "session goes on after the refusal: %d" % code)
            c.rcpt("x@example.test")
            code, msg = c.data(b"Received: from ok (ok [192.0.2.5]) by front.test; now\r\n"
                               b"Subject: relayed ok\r\nMessage-ID: <logical-ok@test>\r\n\r\nhi\r\n")
            fails.check(code == 250, "logical IP not listed: accepted (%d %r)" % (code, msg))
        msgs = gw.wait_maildir(2, timeout=20)
        ids = mxtest.message_ids(msgs)
        fails.check("<logical-ok@test>" in ids and "<logical-bad@test>" not in ids,
                    "only the message from the unlisted logical IP was delivered: %r" % ids)
        log = gw.log()
        fails.check("client 127.0.0.2 listed at zen.example.test" in log, "log names the listing")
        st = json.loads(gw.ctl("stats", "--json"))["counters"]
        fails.check(st.get("dnsbl_listed", 0) >= 1, "stats: DNSBL listings counted (%s)"
                    % st.get("dnsbl_listed"))
        uribl_body(mxgate, port, fails)
        gw.stop()
        if not fails.items:
            gw.cleanup()

        # a dead DNS server (a socket that never answers): "no answer" within the
        # resolver's bound, logged; the session is not stuck
        dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dead.bind(("127.0.0.1", 0))
        gw = mxtest.Gateway(mxgate, trusted=["127.0.0.1/32"], extra="""
dns { servers = [ "127.0.0.1:%d" ]; timeout = 0.5; tries = 1; }
dnsbl { lists = [ "zen.example.test=127.0.0.2 reject" ]; }
sender_domain_check = "reject";
""" % dead.getsockname()[1])
        gw.start()
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=15, source_address=("127.0.0.2", 0)) as c:
            c.ehlo("client.test")
            t0 = time.monotonic()
            code, msg = c.mail("a@good.test")
            took = time.monotonic() - t0
            fails.check(code == 450 and b"4.1.8" in msg,
                        "dead DNS: sender domain undecided -> %d %r (want 450 4.1.8)" % (code, msg))
            fails.check(took < 5, "dead DNS: MAIL answered in %.1fs" % took)
            fails.check(c.noop()[0] == 250, "dead DNS: session still usable")
        # clients that leave while their MAIL check is pending (the answer comes after
        # the session is gone; under ASan this must not touch freed memory)
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5,
                                         source_address=("127.0.0.2", 0))
            s.recv(512)
            s.sendall(b"EHLO c.test\r\nMAIL FROM:<a@good.test>\r\nRCPT TO:<x@example.test>\r\n")
            time.sleep(0.05)
            s.close()
        time.sleep(1.5)  # every pending answer has come back by now
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=15, source_address=("127.0.0.3", 0)) as c:
            fails.check(c.ehlo("client.test")[0] == 250 and c.noop()[0] == 250,
                        "gateway fine after clients left with checks pending")
        fails.check("no answer" in gw.log(), "dead DNS: the missing answer is logged")
        dead.close()
    finally:
        if gw:
            try:
                gw.stop()
            except RuntimeError as e:
                print("FAIL:", e)
        if ub:
            ub.terminate()
            try:
                ub.wait(10)
            except subprocess.TimeoutExpired:
                ub.kill()
                ub.wait(5)
    if gw and not fails.items:
        gw.cleanup()
    fails.finish(gw)


if __name__ == "__main__":
    main()
