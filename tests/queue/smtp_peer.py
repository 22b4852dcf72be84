#!/usr/bin/python3
"""smtp_peer.py - a downstream SMTP server for delivery tests, on Debian's
aiosmtpd. Binds 127.0.0.1 on a free port, prints "PORT <n>" once ready,
and writes every message it accepts to OUTDIR as <seq>.eml (the raw,
dot-unstuffed bytes) plus <seq>.env (MAIL FROM, options and RCPTs). Runs
until its stdin closes or it is killed. Options:
  --tls DIR      offer STARTTLS with a self-signed cert made in DIR (openssl)
  --reject ADDR  answer RCPT TO:<ADDR> with 550 5.1.1
  --defer ADDR   answer RCPT TO:<ADDR> with 451 4.3.0
"""
import argparse
import asyncio
import os
import socket
import ssl
import subprocess
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class Saver:
    def __init__(self, outdir, reject, defer):
        self.outdir = outdir
        self.reject = set(reject)
        self.defer = set(defer)
        self.seq = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.reject:
            return "550 5.1.1 <%s>: Recipient address rejected" % address
        if address in self.defer:
            return "451 4.3.0 <%s>: try again later" % address
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.append(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        self.seq += 1
        base = os.path.join(self.outdir, "%d" % self.seq)
        with open(base + ".tmp", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".env", "w") as f:
            f.write("MAIL %s %s\n" % (envelope.mail_from, " ".join(envelope.mail_options)))
            for r, o in zip(envelope.rcpt_tos, envelope.rcpt_options):
                f.write("RCPT %s %s\n" % (r, " ".join(o)))
            f.write("TLS %s\n" % ("yes" if session.ssl else "no"))
            f.write("PEER %s\n" % session.peer[1])
        os.rename(base + ".tmp", base + ".eml")
        return "250 2.0.0 Ok: queued as %d" % self.seq


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--tls")
    ap.add_argument("--reject", action="append", default=[])
    ap.add_argument("--defer", action="append", default=[])
    a = ap.parse_args()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    kw = {}
    if a.tls:
        crt, key = os.path.join(a.tls, "c.pem"), os.path.join(a.tls, "k.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=peer.test", "-keyout", key, "-out", crt],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(crt, key)
        kw = {"tls_context": ctx, "require_starttls": False}
    handler = Saver(a.outdir, a.reject, a.defer)
    ctl = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False,
                     enable_SMTPUTF8=True, server_hostname="peer.test", **kw)
    ctl.start()
    print("PORT %d" % port, flush=True)
    try:
        sys.stdin.read()  # until the test closes our stdin (or kills us)
    finally:
        ctl.stop()


if __name__ == "__main__":
    main()
