#!/usr/bin/python3
"""test_callout - recipient verification by callout against a real downstream.

A Python aiosmtpd server on loopback is the route of other.test; it accepts
alice@other.test and refuses everyone else with 550, and records every RCPT
it is asked. mxgate (one worker: the cache is per worker) verifies other.test
recipients by callout:
  - alice is accepted and the message reaches the downstream;
  - bob is refused with 550 5.1.1;
  - bob again, in a new session: refused from the cache (downstream asked once);
  - after `mxctl cache clear` bob is asked about again.
Usage: test_callout.py MXGATE
"""
import os
import smtplib
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest  # noqa: E402

try:
    from aiosmtpd.controller import Controller
except ImportError:
    mxtest.skip("python3-aiosmtpd is not installed")


class Downstream:
    def __init__(self):
        self.rcpts = []  # every RCPT asked, in order
        self.delivered = []  # (rcpts, bytes)
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.lock:
            self.rcpts.append(address)
        if address.lower() != "alice@other.test":
            return "550 5.1.1 <%s>: no such user" % address
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.delivered.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 accepted"

    def asked(self, addr):
        with self.lock:
            return sum(1 for a in self.rcpts if a.lower() == addr)


def main():
    mxgate = sys.argv[1]
    down = Downstream()
    dport = mxtest.free_port()
    ctl = Controller(down, hostname="127.0.0.1", port=dport, decode_data=False)
    ctl.start()
    fails = mxtest.Failures()
    gw = None
    try:
        gw = mxtest.Gateway(mxgate, workers=1, routes={"other.test": "smtp:127.0.0.1:%d" % dport},
                            relay_domains=["other.test"], extra="""
recipient_verification { callout_domains = [ "other.test" ]; timeout = 10; }
""")
        gw.start()

        with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as c:
            c.ehlo("client.test")
            fails.check(c.mail("sender@client.test")[0] == 250, "MAIL accepted")
            code, msg = c.rcpt("alice@other.test")
            fails.check(code == 250, "alice accepted after the callout: %d %r" % (code, msg))
            code, msg = c.rcpt("bob@other.test")
            fails.check(code == 550 and msg.startswith(b"5.1.1"),
                        "bob refused: %d %r (want 550 5.1.1)" % (code, msg))
            code, msg = c.data(b"Subject: callout\r\nMessage-ID: <callout-1@test>\r\n\r\nhi\r\n")
            fails.check(code == 250, "message accepted: %d %r" % (code, msg))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not down.delivered:
            time.sleep(0.1)
        fails.check(len(down.delivered) == 1 and down.delivered[0][0] == ["alice@other.test"] and
                    b"<callout-1@test>" in down.delivered[0][1],
                    "alice's message delivered downstream")
        fails.check(down.asked("bob@other.test") == 1, "bob asked once so far")

        # bob again, new session: the cached answer, downstream not asked
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as c:
            c.ehlo("client.test")
            c.mail("sender@client.test")
            code, msg = c.rcpt("bob@other.test")
            fails.check(code == 550 and msg.startswith(b"5.1.1"), "bob refused again: %d" % code)
        fails.check(down.asked("bob@other.test") == 1,
                    "second RCPT for bob answered from the cache (downstream asked %d times)" %
                    down.asked("bob@other.test"))

        out = gw.ctl("cache", "clear")
        fails.check("cleared" in out, "mxctl cache clear: %r" % out)
        with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as c:
            c.ehlo("client.test")
            c.mail("sender@client.test")
            code, msg = c.rcpt("bob@other.test")
            fails.check(code == 550, "bob refused after the clear: %d" % code)
        fails.check(down.asked("bob@other.test") == 2,
                    "after cache clear bob was asked again (downstream asked %d times)" %
                    down.asked("bob@other.test"))
        fails.check("callout <bob@other.test>: rejected" in gw.log(), "log line of the callout")
        gw.stop()
        if not fails.items:
            gw.cleanup()

        # refresh: past negative_refresh the cached answer is still served at once, and
        # the address is verified again in the background (once)
        gw = mxtest.Gateway(mxgate, workers=1, routes={"other.test": "smtp:127.0.0.1:%d" % dport},
                            relay_domains=["other.test"], extra="""
recipient_verification { callout_domains = [ "other.test" ]; negative_refresh = 1; }
""")
        gw.start()
        before = down.asked("carol@other.test")

        def rcpt_carol():
            with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as c:
                c.ehlo("client.test")
                c.mail("sender@client.test")
                return c.rcpt("carol@other.test")[0]

        fails.check(rcpt_carol() == 550, "carol refused (callout)")
        time.sleep(1.5)
        fails.check(rcpt_carol() == 550, "carol refused from the cache past the refresh time")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and down.asked("carol@other.test") - before < 2:
            time.sleep(0.1)
        fails.check(rcpt_carol() == 550, "carol refused again")
        fails.check(down.asked("carol@other.test") - before == 2,
                    "one background re-verification (downstream asked %d times)" %
                    (down.asked("carol@other.test") - before))
    finally:
        if gw:
            try:
                gw.stop()
            except RuntimeError as e:
                print("FAIL:", e)
        ctl.stop()
    if gw and not fails.items:
        gw.cleanup()
    fails.finish(gw)


if __name__ == "__main__":
    main()
