#!/usr/bin/python3
"""scan_vs_sa.py - messages/s of the mxgate scan engine beside SpamAssassin's
on the same messages and the same rule files (scan only, no network).

    perf/scan_vs_sa.py --mxbench build/perf/mxbench --corpus DIR [--count 50]
                       [--cache DIR] [--repeat 5]

Takes the first --count message files under DIR (sorted path order, the tree
walked recursively), writes them to a temporary folder and into one mbox, then:
  - SpamAssassin: `spamassassin -L -t --mbox` over the mbox once, and over a
    one-message mbox to measure start-up (rule loading, ~seconds); its rate is
    (count - 1) / (CPU(count) - CPU(1)), CPU = user + sys of the child, so
    start-up is left out and the machine's other load does not count;
  - mxgate: `mxbench scan --json` over the folder (engine from the cache,
    CPU time of the scanning thread).
Prints both rates and the ratio mxgate / SpamAssassin. Debian's spamassassin
reads /etc/spamassassin and /usr/share/spamassassin (the same rule paths
mxbench is given here).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

RULES = ['/etc/spamassassin', '/usr/share/spamassassin']


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def sa_cpu(mbox):
    """CPU seconds of one `spamassassin -L -t --mbox` run over mbox."""
    before = child_cpu()
    with open(mbox, 'rb') as f:
        subprocess.run(['spamassassin', '-L', '-t', '--mbox'], stdin=f,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
                       timeout=1800)
    return child_cpu() - before


def write_mbox(path, msgs):
    with open(path, 'wb') as f:
        for m in msgs:
            f.write(b'From mxbench@localhost Thu Jan  1 00:00:00 1970\n')
            for line in m.replace(b'\r\n', b'\n').split(b'\n'):
                # mboxrd quoting: ">From " lines gain one '>'
                if line.lstrip(b'>').startswith(b'From '):
                    line = b'>' + line
                f.write(line + b'\n')
            f.write(b'\n')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--mxbench', required=True)
    ap.add_argument('--corpus', required=True)
    ap.add_argument('--count', type=int, default=50)
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--cache', default='/tmp/mxbench-hs-cache')
    a = ap.parse_args()

    paths = []
    for root, dirs, files in os.walk(a.corpus):
        dirs.sort()
        for n in sorted(files):
            if not n.startswith('.'):
                paths.append(os.path.join(root, n))
    paths = sorted(paths)[:a.count]
    if len(paths) < 2:
        sys.exit('need at least 2 messages')
    msgs = [open(p, 'rb').read() for p in paths]
    nbytes = sum(len(m) for m in msgs)

    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, 'msgs')
        os.mkdir(folder)
        for i, m in enumerate(msgs):
            with open(os.path.join(folder, '%06d.eml' % i), 'wb') as f:
                f.write(m)
        mbox_all, mbox_one = os.path.join(tmp, 'all.mbox'), os.path.join(tmp, 'one.mbox')
        write_mbox(mbox_all, msgs)
        write_mbox(mbox_one, msgs[:1])

        out = subprocess.run([a.mxbench, 'scan', '--corpus', folder, '--cache', a.cache,
                              '--repeat', str(a.repeat), '--json'] +
                             [x for r in RULES for x in ('--rules', r)],
                             capture_output=True, check=True, timeout=1800).stdout
        mx = json.loads(out)

        one = sa_cpu(mbox_one)
        full = sa_cpu(mbox_all)
    sa_rate = (len(msgs) - 1) / max(full - one, 1e-9)
    ratio = mx['messages_per_s'] / sa_rate
    print('messages            %d (%.2f MB), first %d files of %s' %
          (len(msgs), nbytes / 1e6, len(msgs), a.corpus))
    print('spamassassin -L -t  %.2f messages/s per core  (CPU %.2f s for %d, start-up %.2f s)' %
          (sa_rate, full, len(msgs), one))
    print('mxgate scan         %.1f messages/s per core  (%.2f MB/s)' %
          (mx['messages_per_s'], mx['mb_per_s']))
    print('ratio mxgate/SA     %.0f' % ratio)
    return 0


if __name__ == '__main__':
    sys.exit(main())
