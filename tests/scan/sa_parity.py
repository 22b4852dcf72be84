#!/usr/bin/python3
"""sa_parity.py - compare the rules mxgate reports with SpamAssassin's tests= on
the same messages (developer tool; SpamAssassin takes seconds per message).

usage: sa_parity.py SCAN_CLI CACHE_DIR FILE...
Runs `spamassassin -L -t` and scan_cli on each file with the stock rules and
prints, per message and in total, the rules both report, SA-only and mxgate-only;
then the same totals restricted to the rules mxgate runs (regex and meta rules,
not eval/network ones) and to regex rules alone (header, body, rawbody, uri,
full, mimeheader), and which rules make up the differences. Last, from SpamAssassin's
`-D rules` debug output: agreement over every regex rule mxgate runs, `__` sub-rules
included (the rules the engine actually matches; tests= shows mostly metas).

SA_PARITY_CACHE=DIR keeps SpamAssassin's answer per message (by content hash and
the rule files' mtimes) so that a re-run after an engine change only reruns
scan_cli; SA_PARITY_JOBS=N runs N spamassassin processes at once.
"""
import collections, concurrent.futures, glob, hashlib, json, os, re, subprocess, sys

REGEX_KINDS = {'header', 'body', 'rawbody', 'uri', 'full', 'mimeheader'}


def rules_stamp():
    """The rule files' names and mtimes: a cached SA answer is for these."""
    h = hashlib.sha256()
    for d in ('/etc/spamassassin', '/usr/share/spamassassin'):
        for f in sorted(glob.glob(d + '/*')):
            h.update(('%s %d\n' % (f, os.stat(f).st_mtime_ns)).encode())
    return h.hexdigest()


def sa_tests(path, cache=None, stamp=''):
    """SpamAssassin's reported rules (tests=) and, from `-D rules`, every
    regex rule that hit, sub-rules included."""
    with open(path, 'rb') as f:
        data = f.read()
    key = None
    if cache:
        key = os.path.join(cache, hashlib.sha256(stamp.encode() + data).hexdigest() + '.json')
        try:
            with open(key) as f:
                a, hits = json.load(f)
            return set(a), set(hits)
        except (OSError, ValueError):
            pass
    p = subprocess.run(['spamassassin', '-L', '-t', '-D', 'rules'], input=data,
                       capture_output=True, timeout=300)
    out, dbg = p.stdout.decode('utf-8', 'replace'), p.stderr.decode('utf-8', 'replace')
    hits = set(m.group(2) for m in re.finditer(
        r'ran (header|body|rawbody|uri|full|mimeheader|eval) rule (\S+) ======> got hit', dbg))
    m = re.search(r'^X-Spam-Status:.*?tests=(.*?)\s+autolearn=', out, re.M | re.S)
    a = set()
    if m:
        a = set(t for t in re.split(r'[,\s]+', m.group(1)) if t and t != 'none')
    if key and p.returncode == 0:
        with open(key + '.tmp', 'w') as f:
            json.dump([sorted(a), sorted(hits)], f)
        os.replace(key + '.tmp', key)
    return a, hits


def main():
    cli, cache, files = sys.argv[1], sys.argv[2], sys.argv[3:]
    out = subprocess.run([cli, '-l', '-a', '-c', cache, '-r', '/etc/spamassassin', '-r',
                          '/usr/share/spamassassin'] + files, capture_output=True).stdout.decode()
    mx, kind, mx_all = {}, {}, {}
    for line in out.splitlines():
        m = re.match(r'rule (\S+) (\S+)$', line)
        if m:
            kind[m.group(1)] = m.group(2)
            continue
        m = re.match(r'(.*): score=\S+ spam=\d tests=(.*)$', line)
        if m:
            mx[m.group(1)] = set(t for t in m.group(2).split(',') if t and t != 'none')
            continue
        m = re.match(r'(.*): all=(.*)$', line)
        if m:
            mx_all[m.group(1)] = set(t for t in m.group(2).split(',') if t)
    tot = collections.Counter()
    diff_rules = {'sa_only': collections.Counter(), 'mx_only': collections.Counter()}
    sub = collections.Counter()
    sub_diff = {'sa_only': collections.Counter(), 'mx_only': collections.Counter()}
    nat = collections.Counter()
    nat_diff = {'sa_only': collections.Counter(), 'mx_only': collections.Counter()}
    cache, stamp = os.environ.get('SA_PARITY_CACHE'), ''
    if cache:
        os.makedirs(cache, exist_ok=True)
        stamp = rules_stamp()
    jobs = int(os.environ.get('SA_PARITY_JOBS', '1'))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        sa = list(pool.map(lambda f: sa_tests(f, cache, stamp), files))
    for f, (a, sa_regex) in zip(files, sa):
        b = mx.get(f, set())
        # every regex rule mxgate runs, `__` sub-rules included; SA does not
        # log mimeheader rules (MIMEHeader plugin) in -D rules, and logs some
        # reported rules (GTUBE) elsewhere: tests= counts too
        runs = lambda r: kind.get(r) in REGEX_KINDS - {'mimeheader'}
        ra = set(filter(runs, sa_regex | a))
        rb = set(filter(runs, mx_all.get(f, set())))
        sub['both'] += len(ra & rb)
        sub['sa_only'] += len(ra - rb)
        sub['mx_only'] += len(rb - ra)
        sub_diff['sa_only'].update(ra - rb)
        sub_diff['mx_only'].update(rb - ra)
        # the SpamAssassin evals mxgate computes natively, sub-rules included
        native = lambda r: kind.get(r) in ('native', 'mimeeval')
        na = set(filter(native, sa_regex | a))
        nb = set(filter(native, mx_all.get(f, set())))
        nat['both'] += len(na & nb)
        nat['sa_only'] += len(na - nb)
        nat['mx_only'] += len(nb - na)
        nat_diff['sa_only'].update(na - nb)
        nat_diff['mx_only'].update(nb - na)
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
    total = sub['both'] + sub['sa_only'] + sub['mx_only']
    print('parity over every regex rule mxgate runs but mimeheader, sub-rules included '
          '(SA -D rules): '
          '%d in both, %d SpamAssassin only, %d mxgate only; agreement %d/%d = %.1f%%' %
          (sub['both'], sub['sa_only'], sub['mx_only'], sub['both'], total,
           100.0 * sub['both'] / total if total else 100.0))
    for side in ('sa_only', 'mx_only'):
        print('regex %s by rule: %s' % (side, ', '.join('%s %d' % (r, n)
                                                        for r, n in sub_diff[side].most_common())))
    total = nat['both'] + nat['sa_only'] + nat['mx_only']
    print('parity over the eval rules mxgate computes natively, sub-rules included '
          '(SA -D rules): %d in both, %d SpamAssassin only, %d mxgate only; '
          'agreement %d/%d = %.1f%%' % (nat['both'], nat['sa_only'], nat['mx_only'], nat['both'],
                                        total, 100.0 * nat['both'] / total if total else 100.0))
    for side in ('sa_only', 'mx_only'):
        print('native %s by rule: %s' % (side, ', '.join('%s %d' % (r, n)
                                                         for r, n in nat_diff[side].most_common())))


if __name__ == '__main__':
    main()
