#!/usr/bin/python3
"""test_mxbench.py - end-to-end checks of mxbench over loopback.

Usage: test_mxbench.py MXBENCH_BINARY

An aiosmtpd server in this process stores what it receives. Checks:
  * `mxbench gen` is reproducible (same seed -> same bytes), sizes stay in
    2 KB..2 MB, Message-IDs are unique, the mix has every kind of message;
  * every byte mxbench sends equals the corpus message in CRLF form with
    the Message-ID replaced (dot-stuffing undone by the server);
  * --record lists exactly the messages that got 250 (the server here
    tempfails and rejects some on purpose), and the JSON counts match;
  * Maildir and mbox corpora load (with ">From " unescaping and dot lines);
  * STARTTLS works against a server with a self-signed certificate.
"""
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

MXBENCH = sys.argv[1]
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


class Store:
    """Accept most mail; tempfail every 7th, reject every 11th DATA."""

    def __init__(self):
        self.accepted = {}  # message-id -> content bytes
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        m = re.search(rb"^Message-ID: (\S+)\r\n", envelope.original_content, re.M | re.I)
        mid = m.group(1).decode() if m else None
        if self.n % 7 == 0:
            return "451 4.3.0 try later"
        if self.n % 11 == 0:
            return "554 5.7.1 no thanks"
        self.accepted[mid] = envelope.original_content
        return "250 2.0.0 Ok: queued as Q%d" % self.n


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wire_form(raw):
    """What mxbench must deliver: CRLF lines, corpus Message-ID removed."""
    lines = re.split(rb"\r\n|\n|\r", raw)
    if lines and lines[-1] == b"":
        lines.pop()
    out, in_hdr, skipping = [], True, False
    for ln in lines:
        if in_hdr:
            if ln == b"":
                in_hdr = False
            elif skipping and ln[:1] in (b" ", b"\t"):
                continue
            else:
                skipping = False
                if ln.lower().startswith(b"message-id:"):
                    skipping = True
                    continue
        out.append(ln)
    return b"\r\n".join(out) + b"\r\n"


def run_bench(args):
    p = subprocess.run([MXBENCH, "smtp", "--json"] + args, capture_output=True, timeout=120)
    if p.returncode != 0:
        print(p.stderr.decode())
    check(p.returncode == 0, "mxbench exit code %d for %s" % (p.returncode, args))
    return json.loads(p.stdout)


def main():
    tmp = tempfile.mkdtemp(prefix="mxbench-test-")
    try:
        # --- corpus generator ---
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        for d in (a, b):
            subprocess.run([MXBENCH, "gen", "--seed", "42", "--count", "60", "--out", d],
                           check=True, timeout=60)
        names = sorted(os.listdir(a))
        check(names == ["%06d.eml" % i for i in range(1, 61)], "gen file names")
        ids, kinds = set(), set()
        for n in names:
            da, db = open(os.path.join(a, n), "rb").read(), open(os.path.join(b, n), "rb").read()
            check(da == db, "gen reproducible: " + n)
            check(2048 <= len(da) <= 2 * 1024 * 1024, "size of %s is %d" % (n, len(da)))
            m = re.search(rb"^Message-ID: (\S+)$", da, re.M)
            check(m is not None, "Message-ID in " + n)
            if m:
                ids.add(m.group(1))
            for k in (b"text/plain", b"text/html", b"multipart/alternative",
                      b"multipart/mixed", b"charset=ISO-2022-JP", b"Content-Transfer-Encoding: base64"):
                if k in da:
                    kinds.add(k)
            if b"ISO-2022-JP" in da:
                body = da.split(b"\n\n", 1)[1]
                check(all(c < 0x80 for c in body), "ISO-2022-JP body is 7-bit in " + n)
                text = body.decode("iso2022_jp")
                check(re.search("[\u3040-\u30ff\u4e00-\u9fff]", text) is not None,
                      "Japanese text decodes in " + n)
        check(len(ids) == 60, "unique Message-IDs: %d" % len(ids))
        check(len(kinds) == 6, "message kinds present: %s" % sorted(kinds))
        c = os.path.join(tmp, "c")
        subprocess.run([MXBENCH, "gen", "--seed", "43", "--count", "3", "--out", c], check=True)
        check(open(os.path.join(c, "000001.eml"), "rb").read()
              != open(os.path.join(a, "000001.eml"), "rb").read(), "another seed, other bytes")

        # --- a hand-made corpus with dot lines, bare CR/LF, a folded Message-ID ---
        edge = os.path.join(tmp, "edge")
        os.mkdir(edge)
        msgs = {
            "1.eml": b"From: a@x.test\nMessage-ID:\n <folded@x.test>\nSubject: dots\n\n.\n..two\n.x\nend",
            "2.eml": b"Subject: crlf\r\nMessage-ID: <m2@x.test>\r\n\r\nline\r\n.\r\nbare\rcr\n",
            "3.eml": b"Subject: no id\n\nbody line\n",
        }
        for k, v in msgs.items():
            open(os.path.join(edge, k), "wb").write(v)

        store = Store()
        port = free_port()
        ctl = Controller(store, hostname="127.0.0.1", port=port)
        ctl.start()
        try:
            rec = os.path.join(tmp, "rec.txt")
            for corpus, nmsg, conns in ((edge, 30, 3), (a, 60, 4)):
                store.accepted.clear()
                store.n = 0
                res = run_bench(["--target", "127.0.0.1:%d" % port, "--connections", str(conns),
                                 "--messages", str(nmsg), "--corpus", corpus, "--record", rec])
                recorded = [l.split(" ", 1) for l in open(rec).read().splitlines()]
                rec_ids = [r[0] for r in recorded]
                check(sorted(rec_ids) == sorted(store.accepted), "record == accepted set")
                check(len(set(rec_ids)) == len(rec_ids), "record ids unique")
                check(all(r[1].startswith("250 2.0.0 Ok: queued as Q") for r in recorded),
                      "record carries the 250 line")
                exp_temp = nmsg // 7
                exp_rej = sum(1 for i in range(1, nmsg + 1) if i % 11 == 0 and i % 7 != 0)
                check(res["started"] == nmsg, "started %d" % res["started"])
                check(res["accepted"] == nmsg - exp_temp - exp_rej, "accepted %d" % res["accepted"])
                check(res["tempfailed"] == exp_temp, "tempfailed %d" % res["tempfailed"])
                check(res["rejected"] == exp_rej, "rejected %d" % res["rejected"])
                check(res["reply_codes"].get("451") == exp_temp, "451 count")
                check(res["errors"]["total"] == 0, "no errors")
                # the bytes: the sent copy is the corpus message with a new Message-ID
                files = sorted(f for f in os.listdir(corpus))
                for mid, content in store.accepted.items():
                    n = int(mid.split(".")[2].split("@")[0])
                    raw = open(os.path.join(corpus, files[n % len(files)]), "rb").read()
                    want = b"Message-ID: " + mid.encode() + b"\r\n" + wire_form(raw)
                    check(content == want, "bytes of %s (%s)" % (mid, files[n % len(files)]))

            # --- Maildir and mbox ---
            md = os.path.join(tmp, "md")
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(md, sub))
            open(os.path.join(md, "cur", "1:2,S"), "wb").write(b"Subject: m1\n\nhello\n")
            open(os.path.join(md, "new", "2"), "wb").write(b"Subject: m2\n\nworld\n")
            store.accepted.clear()
            store.n = 0
            res = run_bench(["--target", "127.0.0.1:%d" % port, "--messages", "2", "--corpus", md])
            check(res["corpus_messages"] == 2 and res["accepted"] == 2, "Maildir corpus")
            mbox = os.path.join(tmp, "mbox")
            open(mbox, "wb").write(b"From a@x Mon Jan  1 00:00:00 2024\nSubject: one\n\n>From here\n\n"
                                   b"From b@x Mon Jan  1 00:00:01 2024\nSubject: two\n\nbody\n")
            store.accepted.clear()
            store.n = 0
            res = run_bench(["--target", "127.0.0.1:%d" % port, "--messages", "2", "--corpus", mbox])
            check(res["corpus_messages"] == 2 and res["accepted"] == 2, "mbox corpus")
            got = sorted(store.accepted.values())
            check(any(b"\r\nFrom here\r\n" in g for g in got), "mbox >From unescaped: %r" % got)
        finally:
            ctl.stop()

        # --- pipelining, against Postfix's smtp-sink when it is installed ---
        if os.path.exists("/usr/sbin/smtp-sink"):
            port = free_port()
            sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "nobody", "127.0.0.1:%d" % port,
                                     "100"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                import time
                for _ in range(50):  # wait for its listener (bounded)
                    try:
                        import socket
                        socket.create_connection(("127.0.0.1", port), 0.2).close()
                        break
                    except OSError:
                        time.sleep(0.1)
                rec = os.path.join(tmp, "rec2.txt")
                res = run_bench(["--target", "127.0.0.1:%d" % port, "--connections", "10",
                                 "--messages", "200", "--corpus", a, "--pipelining",
                                 "--rcpt", "x@example.test", "--rcpt", "y@example.test",
                                 "--record", rec])
                check(res["accepted"] == 200 and res["errors"]["total"] == 0,
                      "pipelined run against smtp-sink: %s" % res)
                check(len(set(open(rec).read().splitlines())) == 200, "200 recorded")
            finally:
                sink.kill()
                sink.wait()

        # --- STARTTLS ---
        key, crt = os.path.join(tmp, "k.pem"), os.path.join(tmp, "c.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                        "-out", crt, "-days", "1", "-subj", "/CN=localhost"],
                       check=True, capture_output=True, timeout=60)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(crt, key)
        tls_store = Store()
        tls_store.n = 10**6 + 1  # 10**6+1.. are neither multiples of 7 nor 11 for a while
        port = free_port()
        ctl = Controller(tls_store, hostname="127.0.0.1", port=port, tls_context=ctx,
                         require_starttls=True)
        ctl.start()
        try:
            res = run_bench(["--target", "127.0.0.1:%d" % port, "--connections", "2",
                             "--messages", "6", "--corpus", edge, "--starttls"])
            check(res["accepted"] + res["tempfailed"] + res["rejected"] == 6 and res["accepted"] >= 4,
                  "STARTTLS run: %s" % res)
            check(res["errors"]["total"] == 0, "STARTTLS errors: %s" % res["errors"])
            check(len(tls_store.accepted) == res["accepted"], "STARTTLS server saw them")
        finally:
            ctl.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d failure(s)" % len(failures))
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
