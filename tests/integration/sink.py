#!/usr/bin/python3
"""A downstream SMTP server for tests (aiosmtpd): stores each message as
<dir>/<n>.eml with X-Envelope-* lines; recipients starting with "reject"
get 550, with "defer" get 451. Usage: sink.py PORT DIR [HOST [--until-killed]]
Without --until-killed it stops when its standard input is closed."""
import asyncio
import os
import signal
import sys

from aiosmtpd.controller import Controller

port, outdir = int(sys.argv[1]), sys.argv[2]
host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
os.makedirs(outdir, exist_ok=True)
count = [0]


class Handler:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject"):
            return "550 5.1.1 No such user here"
        if address.startswith("defer"):
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        count[0] += 1
        tmp = os.path.join(outdir, ".%d.tmp" % count[0])
        with open(tmp, "wb") as f:
            f.write(b"X-Envelope-From: " + envelope.mail_from.encode() + b"\r\n")
            f.write(b"X-Envelope-To: " + ",".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(outdir, "%d.eml" % count[0]))
        return "250 2.0.0 Message accepted"


signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
ctl = Controller(Handler(), hostname=host, port=port, decode_data=False,
                 enable_SMTPUTF8=True)
ctl.start()
print("sink ready", flush=True)
try:
    if "--until-killed" in sys.argv:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    else:
        sys.stdin.read()  # runs until the test closes our stdin
finally:
    ctl.stop()
