#!/usr/bin/python3
"""Configuration hot reload under load.

Postfix's smtp-source keeps sending (10 sessions, 2000 messages a round, a new
connection per message) while the test reloads the configuration 50 times
with `mxctl reload`, alternating two valid files that differ in smtp.hostname,
smtp.max_recipients and the scan rule file, with one invalid file among them.
Checks:
  - smtp-source exits 0 every round and every message is in the Maildir;
  - each valid reload answers "reloaded: generation N" (exit 0) and a fresh
    session sees the new hostname right away; `config export` shows it;
  - the invalid file is refused (exit 1) with every error as file:line, and
    the running generation stays;
  - a session opened before a reload keeps its settings (hostname and
    recipient limit) until it ends, across several reloads, and its message
    is delivered;
  - a rule file that does not compile is refused too;
  - SIGHUP reloads like `mxctl reload` (valid and invalid);
  - every replaced generation is released once its sessions are over.
"""
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest  # noqa: E402

mxgate = sys.argv[1]
for p in ("/usr/sbin/smtp-source", "smtp-source"):
    if os.path.exists(p) or mxtest.shutil.which(p):
        source = p
        break
else:
    mxtest.skip("smtp-source (postfix) is not installed")

RELOADS = 50
INVALID_AT = 23  # the one invalid file among the 50
OLD_SESSION_FROM, OLD_SESSION_TO = 10, 16  # a session spans these reloads
ROUND_MSGS = 2000

F = mxtest.Failures()
gw = mxtest.Gateway(mxgate)
base = open(gw.conf).read()
SMTP_LINE = 'smtp { hostname = "mx.test.invalid"; }'
assert SMTP_LINE in base
rules = {}
for v in ("a", "b"):
    rules[v] = os.path.join(gw.dir, "reload-%s.rules" % v)
    with open(rules[v], "w") as f:
        f.write("body MX_RELOAD_%s /reload-marker-%s/\nscore MX_RELOAD_%s 0.5\n"
                % (v.upper(), v, v.upper()))
VARIANT = {
    "a": {"host": "gen-a.test", "max_rcpt": 2},
    "b": {"host": "gen-b.test", "max_rcpt": 4},
}


def config_text(v):
    smtp = 'smtp { hostname = "%s"; max_recipients = %d; }' % (VARIANT[v]["host"],
                                                              VARIANT[v]["max_rcpt"])
    return base.replace(SMTP_LINE, smtp) + 'scan { rules = [ "%s" ]; }\n' % rules[v]


def write_conf(text):
    # whole file at once: the gateway may read it at any moment
    tmp = gw.conf + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, gw.conf)


def mxctl(*args):
    return subprocess.run([gw.mxctl, "-s", gw.socket] + list(args), capture_output=True,
                          timeout=60, text=True)


def ehlo_host(s):
    code, msg = s.ehlo("client.test")
    return msg.split(b"\n")[0].decode() if code == 250 else "EHLO %d" % code


def fresh_host():
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
        return ehlo_host(s)


def rcpt_codes(s, n):
    s.mail("src@remote.invalid")
    codes = [s.rcpt("u%d@example.test" % i)[0] for i in range(n)]
    s.rset()
    return codes


extra_msgs = 0  # messages sent by the checks themselves, besides smtp-source's
write_conf(config_text("a"))
try:
    gw.start(timeout=120)
    F.check(fresh_host() == "gen-a.test", "generation 1 greets as gen-a.test")

    # smtp-source rounds in the background until the reloads are over
    reloads_done = threading.Event()
    rounds = []  # (returncode, stderr tail, start, end)
    running = [None]  # start time of the round in progress

    def load():
        while not reloads_done.is_set() or not rounds:
            t0 = time.monotonic()
            running[0] = t0
            r = subprocess.run([source, "-s", "10", "-m", str(ROUND_MSGS), "-l", "1024",
                                "-f", "src@remote.invalid", "-t", "user@example.test",
                                "-M", "client.test", "127.0.0.1:%d" % gw.port],
                               capture_output=True, timeout=400)
            rounds.append((r.returncode, r.stderr.decode()[-300:], t0, time.monotonic()))
            running[0] = None
    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(0.3)

    current = "a"
    generation = 1
    ok_reloads = 0
    during_load = 0
    old = None  # (session, its variant)
    bad_answers, bad_fresh = [], []
    for i in range(1, RELOADS + 1):
        if i == OLD_SESSION_FROM:
            s = smtplib.SMTP("127.0.0.1", gw.port, timeout=30)
            F.check(ehlo_host(s) == VARIANT[current]["host"], "old session opened on %s"
                    % VARIANT[current]["host"])
            old = (s, current)
            old_variant = current
        if i == INVALID_AT:
            bad = config_text("b" if current == "a" else "a")
            bad = re.sub(r"max_recipients = \d+", 'max_recipients = "many"', bad)
            write_conf(bad + "no_such_key = 1;\n")
            r = mxctl("reload")
            lines = re.findall(r"mxgate\.conf:\d+: .*", r.stderr)
            F.check(r.returncode == 1 and "reload refused" in r.stderr and len(lines) >= 2
                    and any("max_recipients" in x for x in lines)
                    and any("no_such_key" in x for x in lines),
                    "invalid file refused, exit 1, every error with file:line (%r)" % r.stderr)
            F.check(fresh_host() == VARIANT[current]["host"],
                    "after the refused reload generation %d stays" % generation)
            continue
        nxt = "b" if current == "a" else "a"
        write_conf(config_text(nxt))
        t0 = time.monotonic()
        r = mxctl("reload")
        t1 = time.monotonic()
        if r.returncode != 0 or ("reloaded: generation %d" % (generation + 1)) not in r.stdout:
            bad_answers.append((i, r.returncode, r.stdout, r.stderr))
            continue
        # a round still running, or one that ran at any moment of this reload
        now_running = running[0]
        if (now_running is not None and now_running <= t1) or any(
                a <= t1 and t0 <= b for _, _, a, b in rounds):
            during_load += 1
        generation += 1
        ok_reloads += 1
        current = nxt
        got = fresh_host()
        if got != VARIANT[current]["host"]:
            bad_fresh.append((i, got))
        if i == OLD_SESSION_FROM and old:
            # the old session still has its own limit; a new one has the new limit
            s, ov = old
            codes = rcpt_codes(s, 3)
            want = [250, 250, 452] if VARIANT[ov]["max_rcpt"] == 2 else [250, 250, 250]
            F.check(codes == want, "old session keeps max_recipients=%d after the reload (%s)"
                    % (VARIANT[ov]["max_rcpt"], codes))
            with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as n:
                ehlo_host(n)
                codes = rcpt_codes(n, 3)
            want = [250, 250, 452] if VARIANT[current]["max_rcpt"] == 2 else [250, 250, 250]
            F.check(codes == want, "new session gets max_recipients=%d (%s)"
                    % (VARIANT[current]["max_rcpt"], codes))
        if i == OLD_SESSION_TO and old:
            s, ov = old
            F.check(ehlo_host(s) == VARIANT[ov]["host"],
                    "old session still greets as %s after %d reloads"
                    % (VARIANT[ov]["host"], OLD_SESSION_TO - OLD_SESSION_FROM + 1))
            s.sendmail("src@remote.invalid", ["old1@example.test", "old2@example.test"],
                       b"Subject: old session\r\nMessage-ID: <old-session@t>\r\n\r\n"
                       b"reload-marker-%s\r\n" % ov.encode())
            extra_msgs += 2  # one Maildir file per recipient
            s.quit()
            old = None
    F.check(not bad_answers, "%d valid reloads answered 'reloaded: generation N' (bad: %s)"
            % (ok_reloads, bad_answers[:3]))
    F.check(ok_reloads == RELOADS - 1, "%d of %d reloads applied, one refused"
            % (ok_reloads, RELOADS))
    F.check(not bad_fresh, "a fresh session saw the new hostname after every reload (bad: %s)"
            % bad_fresh[:3])
    F.check(during_load == ok_reloads, "every reload happened while smtp-source was sending "
            "(%d of %d)" % (during_load, ok_reloads))
    exp = mxctl("config", "export").stdout
    F.check('hostname = "%s"' % VARIANT[current]["host"] in exp
            and "max_recipients = %d" % VARIANT[current]["max_rcpt"] in exp,
            "config export shows the reloaded configuration")

    # the rules of the current generation scan new messages
    with smtplib.SMTP("127.0.0.1", gw.port, timeout=30) as s:
        s.sendmail("src@remote.invalid", ["rules@example.test"],
                   b"Subject: rules\r\nMessage-ID: <rules-check@t>\r\n\r\nreload-marker-%s\r\n"
                   % current.encode())
    extra_msgs += 1
    rules_variant = current

    # a rule file that does not compile is an invalid configuration too
    with open(rules[current], "a") as f:
        f.write("endif\n")  # a syntax error: endif without if
    nxt = "b" if current == "a" else "a"
    broken = config_text(nxt).replace(rules[nxt], rules[current])
    write_conf(broken)
    r = mxctl("reload")
    F.check(r.returncode == 1 and re.search(r"scan\.rules: .*\.rules:\d+: endif without if",
                                            r.stderr) is not None,
            "a rule that does not compile is refused (%r)" % r.stderr[-300:])
    F.check(fresh_host() == VARIANT[current]["host"], "and the running generation stays")
    with open(rules[current], "w") as f:
        f.write("body MX_RELOAD_%s /reload-marker-%s/\nscore MX_RELOAD_%s 0.5\n"
                % (current.upper(), current, current.upper()))

    # SIGHUP: same as mxctl reload
    reloaded_before = gw.log().count("reloaded: generation")
    nxt = "b" if current == "a" else "a"
    write_conf(config_text(nxt))
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and gw.log().count("reloaded: generation") == reloaded_before:
        time.sleep(0.05)
    F.check("reloaded: generation %d" % (generation + 1) in gw.log(),
            "SIGHUP reloads: generation %d" % (generation + 1))
    generation += 1
    current = nxt
    F.check(fresh_host() == VARIANT[current]["host"], "after SIGHUP new sessions greet as %s"
            % VARIANT[current]["host"])
    refused_before = gw.log().count("reload refused")
    write_conf(config_text(current) + "listen = 5;\n")
    gw.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and gw.log().count("reload refused") == refused_before:
        time.sleep(0.05)
    F.check(re.search(r"reload: .*mxgate\.conf:\d+: ", gw.log()) is not None
            and gw.log().count("reload refused") == refused_before + 1,
            "SIGHUP with an invalid file: refused, errors with file:line in the log")
    F.check(fresh_host() == VARIANT[current]["host"], "and generation %d stays" % generation)

    reloads_done.set()
    loader.join(450)
    F.check(not loader.is_alive(), "smtp-source rounds finished")
    F.check(rounds and all(x[0] == 0 for x in rounds),
            "smtp-source exits 0 in every round (%d rounds: %s)"
            % (len(rounds), [x[:2] for x in rounds if x[0] != 0][:2]))
    want = len(rounds) * ROUND_MSGS + extra_msgs
    msgs = gw.wait_maildir(want, timeout=180)
    F.check(len(msgs) == want, "every message is in the Maildir: %d (got %d)"
            % (want, len(msgs)))
    if len(msgs) != want:
        ids = [m.split(b"Message-ID:")[1][:40] for m in msgs if b"Message-ID:" in m]
        print("Message-IDs not from smtp-source:", [i for i in ids if b"smtp-source" not in i][:10])
    old_msg = [m for m in msgs if b"<old-session@t>" in m]
    F.check(len(old_msg) == 2 and all((b"X-Spam-Rules: MX_RELOAD_%s" % old_variant.upper().encode())
                                      in m for m in old_msg),
            "the old session's message was delivered, scanned by its own rules (MX_RELOAD_%s)"
            % old_variant.upper())
    rules_msg = [m for m in msgs if b"<rules-check@t>" in m]
    F.check(len(rules_msg) == 1
            and (b"X-Spam-Rules: MX_RELOAD_%s" % rules_variant.upper().encode()) in rules_msg[0],
            "the reloaded rule set scanned a new message (MX_RELOAD_%s hit)"
            % rules_variant.upper())

    # every replaced generation is released once its sessions are over
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and gw.log().count(" released") < generation - 1:
        time.sleep(0.1)
    F.check(gw.log().count(" released") == generation - 1,
            "all %d replaced generations released (log: %d)"
            % (generation - 1, gw.log().count(" released")))
    F.check("queue commit failed" not in gw.log() and "cannot queue" not in gw.log(),
            "no message failed in the queue")
    F.check(gw.stop() == 0, "clean stop")
finally:
    try:
        reloads_done.set()
    except NameError:
        pass
    if F.items:
        print("---- mxgate log (tail) ----\n" + gw.log()[-4000:])
    gw.cleanup()
F.finish()
