#!/usr/bin/python3
"""sa_parity.py - compare the rules mxgate reports with SpamAssassin's tests= on
the same messages (developer tool; SpamAssassin takes seconds per message).

usage: sa_parity.py SCAN_CLI CACHE_DIR FILE...
Runs `spamassassin -L -t` and scan_cli on each file with the stock rules and
prints, per message and in total, the rules both report, SA-only and mxgate-only;
then the same totals restricted to the rules mxgate runs (regex and meta rules,
not eval/network ones) and to regex rules alone (header, body, rawbody, uri,
full, mimeheader), and which rules make up the differences.
"""
import collections, re, subprocess, sys

REGEX_KINDS = {'header', 'body', 'rawbody', 'uri', 'full', 'mimeheader'}


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
    out = subprocess.run([cli, '-l', '-c', cache, '-r', '/etc/spamassassin', '-r',
                          '/usr/share/spamassassin'] + files, capture_output=True).stdout.decode()
    mx, kind = {}, {}
    for line in out.splitlines():
        m = re.match(r'rule (\S+) (\S+)$', line)
        if m:
            kind[m.group(1)] = m.group(2)
            continue
        m = re.match(r'(.*): score=\S+ spam=\d tests=(.*)$', line)
        if m:
            mx[m.group(1)] = set(t for t in m.group(2).split(',') if t and t != 'none')
    tot = collections.Counter()
    diff_rules = {'sa_only': collections.Counter(), 'mx_only': collections.Counter()}
    for f in files:
        a, b = sa_tests(f), mx.get(f, set())
        print('%s: both=%s sa_only=%s mx_only=%s' % (f, sorted(a & b), sorted(a - b), sorted(b - a)))
        for scope, keep in (('all', lambda r: True),
                            ('runs', lambda r: kind.get(r) in REGEX_KINDS | {'meta'}),
                            ('regex', lambda r: kind.get(r) in REGEX_KINDS)):
            aa, bb = set(filter(keep, a)), set(filter(keep, b))
            tot[scope, 'both'] += len(aa & bb)
            tot[scope, 'sa_only'] += len(aa - bb)
            tot[scope, 'mx_only'] += len(bb - aa)
        diff_rules['sa_only'].update(a - b)
        diff_rules['mx_only'].update(b - a)
    for scope, what in (('all', 'all reported hits'),
                        ('runs', 'rules mxgate runs (regex + meta)'),
                        ('regex', 'regex rules only')):
        both, sa_only, mx_only = tot[scope, 'both'], tot[scope, 'sa_only'], tot[scope, 'mx_only']
        total = both + sa_only + mx_only
        print('parity over %s: %d in both, %d SpamAssassin only, %d mxgate only; '
              'agreement %d/%d = %.1f%%' % (what, both, sa_only, mx_only, both, total,
                                          100.0 * both / total if total else 100.0))
    for side in ('sa_only', 'mx_only'):
        print('%s by rule: %s' % (side, ', '.join('%s %d (%s)' % (r, n, kind.get(r, '?'))
                                                  for r, n in diff_rules[side].most_common())))


if __name__ == '__main__':
    main()
