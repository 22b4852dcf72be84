#!/usr/bin/python3
"""relays_parity.py - mxgate's X-Spam-Relays-* pseudo headers against SpamAssassin's.

usage: relays_parity.py [-v] [--limit N] [--received-only] [--require-all] RELAYS_DUMP PATH...

PATH: message files or folders (every file under them, sorted, README.md left
out). SpamAssassin runs once per message (`spamassassin -D metadata -L -t`,
no network, ~1.3 s each); its "metadata: X-Spam-Relays-*" debug lines
give its four strings per message, tests/scan/relays_dump gives mxgate's.
Reports per message how many of the four strings are identical, in total and
for the messages that have a Received header (--received-only: only those
are compared; --limit N: the first N messages). --require-all: exit 1 unless
every string of every message is identical (the test on a few messages).
Exit 77 (skipped) without spamassassin.
"""
import os
import re
import shutil
import subprocess
import sys

NAMES = ("Trusted", "Untrusted", "Internal", "External")
SA_LINE = re.compile(rb"dbg: metadata: X-Spam-Relays-(Trusted|Untrusted|Internal|External): ?(.*)$")


def files_of(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs.sort()
                for n in sorted(names):
                    if n != "README.md" and not n.startswith("."):
                        out.append(os.path.join(root, n))
        else:
            out.append(p)
    return out


def sa_strings(files):
    """per message: dict name -> bytes (one spamassassin run per file: its
    --mbox mode does not keep the messages apart reliably)"""
    res = []
    for f in files:
        with open(f, "rb") as fh:
            p = subprocess.run(["spamassassin", "-D", "metadata", "-L", "-t"], stdin=fh,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        cur = {}
        for line in p.stderr.split(b"\n"):
            m = SA_LINE.search(line)
            if m:
                cur.setdefault(m.group(1).decode(), m.group(2).rstrip(b"\r"))
        if len(cur) != 4:
            sys.exit("%s: spamassassin printed %d of the 4 strings" % (f, len(cur)))
        res.append(cur)
    return res


def mx_strings(dump, files):
    p = subprocess.run([dump] + files, stdout=subprocess.PIPE, check=True)
    res, cur = [], None
    for line in p.stdout.split(b"\n"):
        if line.startswith(b"== "):
            cur = {}
            res.append(cur)
            continue
        m = re.match(rb"X-Spam-Relays-(\w+): ?(.*)$", line)
        if m and cur is not None:
            cur[m.group(1).decode()] = m.group(2)
    return res


def has_received(f):
    with open(f, "rb") as fh:
        head = fh.read().replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    return re.search(rb"(?im)^received:", head) is not None


def main():
    args = sys.argv[1:]
    verbose = require_all = received_only = False
    limit = None
    while args and args[0].startswith("-"):
        a = args.pop(0)
        if a == "-v":
            verbose = True
        elif a == "--received-only":
            received_only = True
        elif a == "--require-all":
            require_all = True
        elif a == "--limit":
            limit = int(args.pop(0))
        else:
            sys.exit(__doc__)
    if len(args) < 2:
        sys.exit(__doc__)
    if shutil.which("spamassassin") is None:
        print("spamassassin is not installed: skipped")
        return 77
    dump, files = args[0], files_of(args[1:])
    if received_only:
        files = [f for f in files if has_received(f)]
    if limit:
        files = files[:limit]
    sa, mx = sa_strings(files), mx_strings(dump, files)
    if len(mx) != len(files):
        sys.exit("relays_dump gave %d records for %d messages" % (len(mx), len(files)))
    per = [0] * 5
    tot = [0, 0]      # strings identical, strings
    rtot = [0, 0, 0]  # with Received: strings identical, strings, messages all 4
    nrcvd = 0
    for f, s, m in zip(files, sa, mx):
        same = sum(1 for n in NAMES if s.get(n) == m.get(n))
        per[same] += 1
        tot[0] += same
        tot[1] += 4
        if has_received(f):
            nrcvd += 1
            rtot[0] += same
            rtot[1] += 4
            rtot[2] += same == 4
        if same != 4 and verbose:
            print("DIFF %s" % f)
            for n in NAMES:
                if s.get(n) != m.get(n):
                    print("  %s\n    sa: %s\n    mx: %s" % (n, s.get(n, b"").decode(errors="replace"),
                                                     m.get(n, b"").decode(errors="replace")))
    print("messages: %d (with Received: %d)" % (len(files), nrcvd))
    print("identical strings per message: " +
          ", ".join("%d of 4: %d" % (k, per[k]) for k in range(4, -1, -1)))
    print("strings identical: %d/%d (%.1f%%)" % (tot[0], tot[1], 100.0 * tot[0] / max(tot[1], 1)))
    print("with Received: strings identical %d/%d (%.1f%%), messages all 4 identical %d/%d (%.1f%%)" %
          (rtot[0], rtot[1], 100.0 * rtot[0] / max(rtot[1], 1), rtot[2], nrcvd,
           100.0 * rtot[2] / max(nrcvd, 1)))
    if require_all and tot[0] != tot[1]:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
