#!/usr/bin/python3
"""pcap_tcp.py - prints the TCP segments of a pcap (from veth_sniff.py) one a
line, sequence and ack numbers relative to each side's ISN, with window,
timestamps and SACK blocks; optionally only one port.

usage: pcap_tcp.py FILE.pcap [PORT]
"""
import struct
import sys

f = open(sys.argv[1], "rb")
port = int(sys.argv[2]) if len(sys.argv) > 2 else None
f.read(24)
isn = {}
t0 = None
while True:
    h = f.read(16)
    if len(h) < 16:
        break
    sec, usec, caplen, origlen = struct.unpack("<IIII", h)
    d = f.read(caplen)
    t = sec + usec / 1e6
    if t0 is None:
        t0 = t
    if len(d) < 34 or d[12:14] != b"\x08\x00" or d[23] != 6:
        continue
    ihl = (d[14] & 15) * 4
    iplen = struct.unpack("!H", d[16:18])[0]
    src = ".".join(map(str, d[26:30]))
    th = d[14 + ihl:]
    sp, dp, seq, ack, off, fl, win = struct.unpack("!HHIIBBH", th[:16])
    doff = (off >> 4) * 4
    dlen = iplen - ihl - doff
    if port and port not in (sp, dp):
        continue
    key = (src, sp, dp)
    if fl & 2:
        isn[key] = seq
    rkey = (".".join(map(str, d[30:34])), dp, sp)
    rs = seq - isn.get(key, 0) & 0xffffffff
    ra = ack - isn.get(rkey, 0) & 0xffffffff if fl & 16 else 0
    flags = "".join(c for c, b in zip("FSRPA", (1, 2, 4, 8, 16)) if fl & b)
    opts = th[20:doff]
    o = []
    i = 0
    while i < len(opts):
        k = opts[i]
        if k == 0:
            break
        if k == 1:
            i += 1
            continue
        if i + 1 >= len(opts):
            break
        ln = opts[i + 1]
        if ln < 2:
            break
        if k == 8 and ln == 10:
            v, e = struct.unpack("!II", opts[i + 2:i + 10])
            o.append("ts %d ecr %d" % (v, e))
        elif k == 5:
            bl = []
            for j in range(i + 2, i + ln, 8):
                l, r = struct.unpack("!II", opts[j:j + 8])
                bl.append("%d-%d" % ((l - isn.get(rkey, 0)) & 0xffffffff, (r - isn.get(rkey, 0)) & 0xffffffff))
            o.append("sack " + ",".join(bl))
        i += ln
    print("%9.4f %s:%d>%d %-4s %d:%d(%d) ack %d win %d %s" % (t - t0, src, sp, dp, flags, rs, rs + dlen, dlen, ra, win, " ".join(o)))
