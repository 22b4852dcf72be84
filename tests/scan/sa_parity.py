#!/usr/bin/python3
"""sa_parity.py - compare the rules mxgate reports with SpamAssassin's tests= on
the same messages (developer tool; SpamAssassin takes seconds per message).

usage: sa_parity.py SCAN_CLI CACHE_DIR FILE...
Runs `spamassassin -L -t` and scan_cli on each file with the stock rules and
prints, per message and in total, the rules both report, SA-only and mxgate-only.
"""
import re, subprocess, sys


def sa_tests(path):
    with open(path, 'rb') as f:
        out = subprocess.run(['spamassassin', '-L', '-t'], stdin=f, capture_output=True,
                             timeout=120).stdout.decode('utf-8', 'replace')
    m = re.search(r'^X-Spam-Status:.*?tests=(.*?)\s+autolearn=', out, re.M | re.S)
    if not m:
        return set()
    return set(t for t in re.split(r'[,\s]+', m.group(1)) if t and t != 'none')


def main():
    cli, cache, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    out = subprocess.run([cli, '-c', cache, '-r', '/etc/spamassassin', '-r',
                          '/usr/share/spamassassin'] + files, capture_output=True).stdout.decode()
    mx = {}
    for line in out.splitlines():
        m = re.match(r'(.*): score=\S+ spam=\d tests=(.*)$', line)
        if m:
            mx[m.group(1)] = set(t for t in m.group(2).split(',') if t)
    both = sa_only = mx_only = 0
    for f in files:
        a, b = sa_tests(f), mx.get(f, set())
        both += len(a & b)
        sa_only += len(a - b)
        mx_only += len(b - a)
        print('%s: both=%s sa_only=%s mx_only=%s' % (f, sorted(a & b), sorted(a - b), sorted(b - a)))
    total = both + sa_only + mx_only
    print('parity: %d rule hits in both, %d SpamAssassin only, %d mxgate only; agreement %.1f%%'
          % (both, sa_only, mx_only, 100.0 * both / total if total else 100.0))


if __name__ == '__main__':
    main()
