#!/usr/bin/python3
"""Send N messages through mxgate over SMTP (smtplib, pipelined where offered),
then wait for all of them in the downstream sink's folder and compare body
checksums. usage: dpdk_client.py HOST PORT COUNT SINK_DIR SEED [BODY_BYTES [WAIT_S]]
With BODY_BYTES, each body is that many bytes of base64 text (random data from
the seed) instead of short random lines; WAIT_S bounds the wait for the sink
(default 60 s)."""
import base64
import hashlib
import os
import random
import smtplib
import sys
import time

host, port, count, sink_dir, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
body_bytes = int(sys.argv[6]) if len(sys.argv) > 6 else 0
wait_s = float(sys.argv[7]) if len(sys.argv) > 7 else 60.0
rng = random.Random(seed)


def make_body():
    if body_bytes:
        text = base64.encodebytes(rng.randbytes(body_bytes * 3 // 4)).decode()
        return text.replace("\n", "\r\n")
    lines = ["".join(rng.choice("abcdefghij .") for _ in range(rng.randint(0, 200)))
             for _ in range(rng.randint(1, 400))]
    return "\r\n".join(lines) + "\r\n"


sent = {}
with smtplib.SMTP(host, port, timeout=120) as s:
    s.ehlo("kernel-peer.test")
    for i in range(count):
        mid = "<dpdk-%s-%d@t>" % (seed, i)
        body = make_body()
        msg = "From: k@peer.test\r\nTo: u@example.test\r\nMessage-ID: %s\r\n\r\n%s" % (mid, body)
        s.sendmail("k@peer.test", ["u@example.test"], msg)
        sent[mid] = hashlib.sha256(body.encode()).hexdigest()
print("sent", len(sent))
deadline = time.monotonic() + wait_s
got = {}
def matched():
    ids = {mid for mid, _ in got.values()}
    return sum(1 for m in sent if m in ids)


while time.monotonic() < deadline and matched() < len(sent):
    for n in os.listdir(sink_dir):
        if not n.endswith(".eml") or n in got:
            continue
        with open(os.path.join(sink_dir, n), "rb") as f:
            raw = f.read()
        head, _, body = raw.partition(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"message-id:"):
                got[n] = (line.split(b":", 1)[1].strip().decode(), hashlib.sha256(body).hexdigest())
    time.sleep(0.2)
ok = {mid: h for mid, h in got.values()}
bad = [m for m in sent if ok.get(m) != sent[m]]
print("delivered", len(sent) - len(bad), "of", len(sent), "intact; mismatched or missing", len(bad))
sys.exit(1 if bad else 0)
