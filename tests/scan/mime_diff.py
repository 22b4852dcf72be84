#!/usr/bin/python3
"""mime_diff.py - differential test of mxgate's streaming MIME parser against
Python's email package: for every message of a corpus, prints the part tree and
decoded bytes in the canonical form of mime_dump.c and compares with it (run on
the whole file and in chunks of random size).

usage: mime_diff.py MIME_DUMP CORPUS_DIR [KNOWN_DIFFS_FILE]
Exit status 0 when every message matches (or is listed as a known difference).
"""
import email, email.header, email.policy, os, subprocess, sys


def fnv(b):
    h = 0xcbf29ce484222325
    for c in b:
        h ^= c
        h = (h * 0x100000001b3) & 0xffffffffffffffff
    return h


def fname(m):
    try:
        f = m.get_filename()
    except Exception:
        return ''
    if not f:
        return ''
    try:
        f = str(email.header.make_header(email.header.decode_header(f)))
    except Exception:
        pass
    return f.replace('\n', ' ').replace('\r', ' ')


def walk(m, depth, out):
    ct = m.get_content_type()
    if ct == 'message/delivery-status':
        out.append('%d S %s %s' % (depth, ct, fname(m)))
        return
    if m.is_multipart():
        kind = 'R' if m.get_content_maintype() == 'message' else 'M'
        out.append('%d %s %s %s' % (depth, kind, ct, fname(m)))
        for sub in m.get_payload():
            walk(sub, depth + 1, out)
        return
    data = m.get_payload(decode=True) or b''
    if isinstance(data, str):
        data = data.encode('utf-8', 'surrogateescape')
    out.append('%d L %s %d %016x %s' % (depth, ct, len(data), fnv(data), fname(m)))


def python_dump(path):
    with open(path, 'rb') as f:
        msg = email.message_from_bytes(f.read())
    out = []
    walk(msg, 0, out)
    return [l.rstrip() for l in out]


def c_dump(tool, path, seed):
    r = subprocess.run([tool, path, str(seed)], capture_output=True, timeout=30)
    if r.returncode != 0:
        return None
    lines = r.stdout.decode('utf-8', 'replace').splitlines()
    return [l.rstrip() for l in lines if not l.startswith('defects ')]


def main():
    tool, corpus = sys.argv[1], sys.argv[2]
    known = set()
    if len(sys.argv) > 3:
        for l in open(sys.argv[3]):
            l = l.split('#')[0].strip()
            if l:
                known.add(l)
    files = []
    for root, _, names in os.walk(corpus):
        for n in sorted(names):
            files.append(os.path.join(root, n))
    files.sort()
    if not files:
        # no corpus at that path: say so (meson: skipped), never "0 differ"
        print('mime_diff: no messages under %s' % corpus)
        return 77
    bad = same = skipped = 0
    for path in files:
        rel = os.path.relpath(path, corpus)
        want = python_dump(path)
        for seed in (0, 7):
            got = c_dump(tool, path, seed)
            if got == want:
                continue
            if rel in known:
                skipped += 1
                break
            bad += 1
            print('DIFF %s (seed %d)' % (rel, seed))
            import difflib
            for l in difflib.unified_diff(want, got or ['<crash>'], 'python', 'mxgate', lineterm='', n=1):
                print('   ', l[:200])
            break
        else:
            same += 1
    print('mime_diff: %d messages identical, %d known differences, %d differ' % (same, skipped, bad))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
