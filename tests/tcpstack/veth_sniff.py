#!/usr/bin/python3
"""veth_sniff.py - minimal packet capture for the veth tests (no tcpdump
needed): records every frame on IFACE, both directions, headers only
(first SNAPLEN bytes), into a pcap file until SIGTERM or SECONDS pass.

usage: veth_sniff.py IFACE OUT.pcap [SECONDS [SNAPLEN]]
"""
import signal
import socket
import struct
import sys
import time

iface, out = sys.argv[1], sys.argv[2]
secs = float(sys.argv[3]) if len(sys.argv) > 3 else 200
snap = int(sys.argv[4]) if len(sys.argv) > 4 else 128
stop = False


def on_term(sig, frm):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_term)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((iface, 0))
s.settimeout(0.2)
end = time.monotonic() + secs
with open(out, "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, snap, 1))
    while not stop and time.monotonic() < end:
        try:
            data = s.recv(65535)
        except socket.timeout:
            continue
        except InterruptedError:
            continue
        t = time.time()
        cap = data[:snap]
        f.write(struct.pack("<IIII", int(t), int((t % 1) * 1e6), len(cap), len(data)) + cap)
