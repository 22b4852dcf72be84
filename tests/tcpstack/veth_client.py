#!/usr/bin/python3
"""veth_client.py - the Linux kernel's TCP as the peer of the userspace stack.

usage: veth_client.py HOST PORT SIZE CONNS
Opens CONNS connections at once; on each: reads the greeting, sends SIZE
seeded random bytes while reading the echo, compares SHA-256 of both
directions, closes. Exit 0 only if every connection matched.
"""
import hashlib
import random
import socket
import sys
import threading
import time


def ping(host, count):
    """ICMP echo over a raw socket (no ping binary needed); returns replies."""
    import struct
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    sock.settimeout(2)
    replies = 0
    for seq in range(count):
        payload = b"mxgate-ping-%d" % seq
        hdr = struct.pack("!BBHHH", 8, 0, 0, 0x4d58, seq)
        s = sum(struct.unpack("!%dH" % ((len(hdr + payload) + 1) // 2), (hdr + payload).ljust(len(hdr + payload) + (len(payload) % 2), b"\0")))
        s = (s >> 16) + (s & 0xFFFF)
        s += s >> 16
        pkt = struct.pack("!BBHHH", 8, 0, ~s & 0xFFFF, 0x4d58, seq) + payload
        sock.sendto(pkt, (host, 0))
        try:
            while True:
                data, _ = sock.recvfrom(2048)
                ihl = (data[0] & 15) * 4
                t, code, _, ident, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if t == 0 and ident == 0x4d58 and rseq == seq and data[ihl + 8:] == payload:
                    replies += 1
                    break
        except socket.timeout:
            pass
    return replies


if sys.argv[1] == "ping":
    n = ping(sys.argv[2], 3)
    print("ping replies %d" % n)
    sys.exit(0 if n == 3 else 1)

host, port, size, conns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
results = {}


def one(i):
    data = random.Random(1000 + i).randbytes(size)
    t0 = time.monotonic()
    s = socket.create_connection((host, port), timeout=60)
    s.settimeout(60)
    greet = b""
    while not greet.endswith(b"\r\n") and len(greet) < 100:
        c = s.recv(100)
        if not c:
            break
        greet += c
    if greet != b"220 mxtest ready\r\n":
        results[i] = "bad greeting %r" % greet
        return
    got = bytearray()

    def reader():
        try:
            while len(got) < size:
                c = s.recv(65536)
                if not c:
                    break
                got.extend(c)
        except OSError as e:
            results[i] = "recv: %s" % e

    t = threading.Thread(target=reader)
    t.start()
    s.sendall(data)
    t.join(90)
    s.close()
    if hashlib.sha256(got).digest() != hashlib.sha256(data).digest():
        results.setdefault(i, "echo mismatch: %d of %d bytes" % (len(got), size))
        return
    results[i] = "ok %.2fs" % (time.monotonic() - t0)


threads = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
for t in threads:
    t.start()
for t in threads:
    t.join(150)
ok = True
for i in range(conns):
    r = results.get(i, "no result")
    print("conn %d: %s" % (i, r))
    ok = ok and r.startswith("ok")
sys.exit(0 if ok else 1)
