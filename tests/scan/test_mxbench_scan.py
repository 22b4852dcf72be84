#!/usr/bin/python3
"""test_mxbench_scan.py - `mxbench scan` measures the real engine on the real corpus.

usage: test_mxbench_scan.py MXBENCH SCAN_CLI RULES_FILE

Writes three messages (CRLF line ends, one with a leading-dot line, so the bench's
dot-unstuffing is exercised) to a temporary folder, runs `mxbench scan --json` and
`scan_cli` on them with the same rule file, and checks: message count and byte
count (exact), that the rule hits and spam verdicts per pass equal what scan_cli
reports for the same files, and that the rates and memchr/memcpy ratios are
positive and consistent (ratio = scan rate / reference rate). Also: a bad
option exits 2, a missing corpus exits 1.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

MSGS = [
    b"From: a@example.com\r\nSubject: free money now\r\nX-Mailer: t\r\n\r\n"
    b"You are a winner, claim the prize.\r\n",
    b"From: b@example.org\r\nSubject: hello\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
    b".a line that starts with a dot\r\nvisit http://www.badhost.test/x today\r\n",
    b"From: c@example.net\r\nSubject: plain\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\n"
    b"nothing to see here here\r\n",
]


def main():
    mxbench, cli, rules = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as tmp:
        corpus = os.path.join(tmp, 'c')
        os.mkdir(corpus)
        paths = []
        for i, m in enumerate(MSGS):
            p = os.path.join(corpus, '%d.eml' % i)
            with open(p, 'wb') as f:
                f.write(m)
            paths.append(p)
        cache = os.path.join(tmp, 'cache')
        out = subprocess.run([mxbench, 'scan', '--rules', rules, '--corpus', corpus,
                              '--cache', cache, '--repeat', '2', '--json'],
                             capture_output=True, timeout=120)
        assert out.returncode == 0, out.stderr
        r = json.loads(out.stdout)
        assert r['messages'] == 3, r
        assert r['bytes'] == sum(len(m) for m in MSGS), r
        assert r['repeat'] == 2
        ref = subprocess.run([cli, '-c', cache, '-r', rules] + paths, capture_output=True,
                             timeout=120).stdout.decode()
        hits = spam = 0
        for line in ref.splitlines():
            m = re.match(r'.*: score=\S+ spam=(\d) tests=(.*)$', line)
            if m:
                spam += int(m.group(1))
                hits += len([t for t in m.group(2).split(',') if t and t != 'none'])
        assert hits >= 3, ref  # the messages do hit rules: the comparison means something
        assert (r['hits'], r['spam']) == (hits, spam), (r, ref)
        for k in ('messages_per_s', 'mb_per_s', 'memchr_mb_per_s', 'memcpy_mb_per_s'):
            assert r[k] > 0, (k, r)
        assert abs(r['ratio_memchr'] - r['mb_per_s'] / r['memchr_mb_per_s']) < 1e-4, r
        assert abs(r['ratio_memcpy'] - r['mb_per_s'] / r['memcpy_mb_per_s']) < 1e-4, r

        bad = subprocess.run([mxbench, 'scan', '--nonsense'], capture_output=True, timeout=30)
        assert bad.returncode == 2, bad
        missing = subprocess.run([mxbench, 'scan', '--rules', rules, '--corpus',
                                  os.path.join(tmp, 'nope')], capture_output=True, timeout=30)
        assert missing.returncode == 1, missing
    print('ok: 3 messages, %d hits, %d spam, as scan_cli' % (hits, spam))
    return 0


if __name__ == '__main__':
    sys.exit(main())
