#!/usr/bin/python3
"""compare_scan.py - content scanning, side by side, on this machine, in one run.

Systems, each fed the same corpus by the same client (`mxbench smtp
--pipelining`), each relaying to the same Postfix `smtp-sink`:

  mxgate+SA      mxgate with Debian's stock SpamAssassin rules
                 (/etc/spamassassin + /usr/share/spamassassin) compiled into
                 Hyperscan; the compiled databases are cached in --cache-dir,
                 the first compile (~60 s) happens at start-up, before timing
  postfix+SA     a private Postfix instance + spamass-milter (-m: headers
                 only, spamc per message) + spamd (--children workers)
  postfix+rspamd a private Postfix instance + Rspamd 3.4: its proxy worker in
                 milter mode, one normal worker, the controller (the stock
                 worker set with count = 1); Hyperscan cache in --cache-dir,
                 timing starts once the workers loaded it

and scan only (no SMTP, no queue): spamc -> the same spamd over the same
files, --children spamc clients at a time; `mxbench scan` when perf/ has it.

Per system: accepted msg/s (mxbench), delivered msg/s (until smtp-sink
counted the last one), CPU seconds per message (utime+stime from
/proc/PID/stat of every process of the system: Postfix master and its
children, spamass-milter and the spamc it ran, spamd and its children, the
rspamd main process and workers, mxgate; before/after, reaped children
included) and the ratio of each to mxgate's.

Proof of scanning, asserted (the script fails otherwise): before timing, the
GTUBE sample must come out as spam (tagged or refused) and a clean sample as
clean; every message the sink received in a timed run must carry the
scanner's verdict header (X-Spam-Status for mxgate and SpamAssassin,
X-Spamd-Result for Rspamd); every spamc answer must be a score.

Isolation: spamd and Rspamd look names up and the system resolver must never
be queried, so the whole run (every server, the sink, the client) happens in
a network namespace this script creates (only loopback, up) and in a mount
namespace where /etc/resolv.conf is bind-mounted to "nameserver 127.0.0.1":
a private dnsmasq there answers NXDOMAIN for every name. Postfix instances,
spamd's and Rspamd's state live in a temporary directory. Every process is
started here and stopped by PID; leftovers in the namespace are killed by PID
and the namespace is deleted on exit; runs are bounded by --messages and
--max-seconds.

Usage (as root, repository root):
  perf/compare/compare_scan.py --mxbench build-compare/perf/mxbench \\
      --mxgate build-compare/app/mxgate [--corpus DIR | --seed N --count N]
      [--messages N] [--conns N] [--children N] [--systems LIST] [--json FILE]
Needs: postfix, spamass-milter, spamd, spamc, rspamd, dnsmasq, iproute2.
"""
import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (private Postfix, smtp-sink, CPU accounting)

log = compare.log
SA_RULE_DIRS = ["/etc/spamassassin", "/usr/share/spamassassin"]
GTUBE_FILE = "/usr/share/doc/spamassassin/examples/sample-spam.txt"
HAM_FILE = "/usr/share/doc/spamassassin/examples/sample-nonspam.txt"
SYSTEMS = ["mxgate", "postfix-sa", "postfix-rspamd", "spamd-scan", "mxbench-scan"]


class Failed(Exception):
    """A check that makes the comparison meaningless failed."""


def popen(cmd, logpath, **kw):
    f = open(logpath, "ab")
    try:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, **kw)
    finally:
        f.close()


def stop_proc(proc, name, sig=signal.SIGTERM, timeout=30):
    """Stops one process this script started, by its pid."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log("%s (pid %d) ignored SIGTERM, killing it" % (name, proc.pid))
        proc.kill()
        proc.wait(timeout=10)


def wait_log(path, needle, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if needle in open(path, "rb").read().decode("utf-8", "replace"):
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def owned_dir(path, user):
    os.makedirs(path, exist_ok=True)
    shutil.chown(path, user, None)
    return path


# ---- the local resolver -----------------------------------------------------------

class Resolver:
    """dnsmasq on 127.0.0.1:53 answering NXDOMAIN for every name (--local=/#/), no
    upstream, no hosts file; queries logged so the report can count them."""

    def __init__(self, tmp):
        self.log_path = os.path.join(tmp, "dnsmasq.log")
        open(self.log_path, "w").close()
        shutil.chown(self.log_path, "dnsmasq", None)
        self.proc = popen(["dnsmasq", "-C", "/dev/null", "--no-resolv", "--no-hosts",
                           "--port", "53", "--listen-address", "127.0.0.1", "--bind-interfaces",
                           "--local=/#/", "--user=dnsmasq", "--keep-in-foreground",
                           "--pid-file=", "--log-queries", "--log-facility=" + self.log_path],
                          os.path.join(tmp, "dnsmasq.out"))
        self.pid = self.proc.pid
        if not wait_log(self.log_path, "started", 10):
            raise Failed("dnsmasq did not start")
        # The namespace's resolv.conf must lead here and answer at once.
        t0 = time.time()
        try:
            socket.getaddrinfo("resolver-check.mxcompare.test", 25)
            raise Failed("resolver-check.mxcompare.test resolved: not our resolver")
        except socket.gaierror:
            pass
        if time.time() - t0 > 2 or not wait_log(self.log_path, "resolver-check", 2):
            raise Failed("the namespace's resolver is not the private dnsmasq")

    def queries(self):
        return sum(1 for line in open(self.log_path, errors="replace") if "query[" in line)

    def stop(self):
        stop_proc(self.proc, "dnsmasq")


# ---- systems ----------------------------------------------------------------------

class MxgateSA:
    """mxgate loading the stock SpamAssassin rule files."""

    name = "mxgate+SA"
    header = rules_header = b"X-Spam-Status:"

    def __init__(self, args, tmp, sink_port):
        d = os.path.join(tmp, "mxgate-sa")
        os.makedirs(os.path.join(d, "spool"))
        # the compiled-rule cache lives in <spool>/scan-cache: keep it across runs
        os.makedirs(args.cache_mxgate, exist_ok=True)
        os.symlink(args.cache_mxgate, os.path.join(d, "spool", "scan-cache"))
        rules = ", ".join('"%s"' % r for r in SA_RULE_DIRS)
        extra = ("scan { rules = [ %s ]; spam_threshold = 5.0; clamav { enabled = false; } }\n"
                 % rules)
        self.port = compare.free_port()
        log("  starting mxgate (compiles the stock rules on the first run, ~60 s)")
        t0 = time.time()
        self.mx = compare.Mxgate(tmp, self.port, sink_port, args.mxgate, args.mxgate_workers,
                                 name="mxgate-sa", extra_conf=extra, start_timeout=600)
        log_text = open(os.path.join(d, "mxgate.log")).read()
        for line in log_text.splitlines():
            if "mxgate[scan]" in line:
                log("   ", line.strip())
        if "rules" not in log_text:
            self.mx.stop()
            raise Failed("mxgate did not report loading scan rules")
        log("  mxgate listening after %.1f s" % (time.time() - t0))
        self.roots = [self.mx.pid]

    def spam_verdict(self, dump):
        return dump_header(dump, b"X-Spam-Status:").startswith(b"Yes")

    def scans(self):
        return None  # the verdict header on every delivered message is the proof

    def stop(self):
        self.mx.stop()


class Spamd:
    """spamd on 127.0.0.1:<port>, --children preforked children, no per-user
    config, its home (Bayes, state) in the temporary directory."""

    def __init__(self, args, tmp):
        self.port = compare.free_port()
        home = owned_dir(os.path.join(tmp, "spamd-home"), "debian-spamd")
        self.log_path = os.path.join(home, "spamd.log")
        n = str(args.children)
        self.proc = popen(["spamd", "--listen=127.0.0.1:%d" % self.port, "-A", "127.0.0.1",
                           "-x", "-u", "debian-spamd", "-H", home,
                           "--min-children=" + n, "--max-children=" + n,
                           "--min-spare=1", "--max-spare=" + n, "-s", self.log_path],
                          os.path.join(tmp, "spamd.out"))
        self.pid = self.proc.pid
        if not compare.wait_port(self.port, 180):
            self.stop()
            raise Failed("spamd did not listen; see " + self.log_path)
        log("  spamd listening on %d (pid %d)" % (self.port, self.pid))

    def stop(self):
        stop_proc(self.proc, "spamd", timeout=60)


MILTER_CF = """\
smtpd_milters = inet:127.0.0.1:{port}
non_smtpd_milters =
milter_default_action = tempfail
milter_protocol = 6
milter_content_timeout = 600s
milter_mail_macros = i {{mail_addr}} {{client_addr}} {{client_name}} {{auth_authen}}
"""


class PostfixSA:
    """Postfix -> spamass-milter -> spamc -> spamd."""

    name = "postfix+SA"
    header = rules_header = b"X-Spam-Status:"

    def __init__(self, args, tmp, sink_port, spamd):
        self.spamd = spamd
        mport = compare.free_port()
        self.milter = popen(["setpriv", "--reuid=spamass-milter", "--regid=spamass-milter",
                             "--init-groups", "spamass-milter",
                             "-p", "inet:%d@127.0.0.1" % mport, "-m",
                             "--", "-d", "127.0.0.1", "-p", str(spamd.port),
                             "-s", str(args.spamc_max_size), "-x"],
                            os.path.join(tmp, "spamass-milter.log"))
        if not compare.wait_port(mport, 20):
            stop_proc(self.milter, "spamass-milter")
            raise Failed("spamass-milter did not listen")
        self.port = compare.free_port()
        try:
            self.pf = compare.Postfix(tmp, self.port, sink_port, name="postfix-sa",
                                      extra_main_cf=MILTER_CF.format(port=mport))
        except RuntimeError:
            stop_proc(self.milter, "spamass-milter")
            raise
        self.roots = [self.pf.pid, self.milter.pid, spamd.pid]

    def spam_verdict(self, dump):
        return dump_header(dump, b"X-Spam-Status:").startswith(b"Yes")

    def scans(self):
        return None  # spamass-milter logs nothing without -d; the header is the proof

    def stop(self):
        self.pf.stop()
        stop_proc(self.milter, "spamass-milter")


RSPAMD_LOCAL = {
    # one normal worker on these 2 CPUs (the proxy and controller are 1 each already)
    "override.d/worker-normal.inc": "count = 1;\n",
    "override.d/logging.inc": 'type = "file";\nfilename = "$LOGDIR/rspamd.log";\nlevel = "info";\n',
    "local.d/options.inc": 'dns {\n  nameserver = ["127.0.0.1:53"];\n}\n',
    # verdict headers on every message, also from 127.0.0.1
    "local.d/milter_headers.conf": ("use = [\"x-spamd-result\", \"x-rspamd-queue-id\", "
                                    "\"x-spam-status\"];\nskip_local = false;\n"
                                    "skip_authenticated = false;\n"),
}


class Rspamd:
    """rspamd -f with the stock /etc/rspamd config and local overrides from the
    temporary directory (LOCAL_CONFDIR); default ports 11332-11334 are free in
    the namespace."""

    def __init__(self, args, tmp):
        d = os.path.join(tmp, "rspamd")
        local = os.path.join(d, "local")
        for rel, text in RSPAMD_LOCAL.items():
            os.makedirs(os.path.dirname(os.path.join(local, rel)), exist_ok=True)
            open(os.path.join(local, rel), "w").write(text)
        run = owned_dir(os.path.join(d, "run"), "_rspamd")
        logdir = owned_dir(os.path.join(d, "log"), "_rspamd")
        db = owned_dir(args.cache_rspamd, "_rspamd")
        self.log_path = os.path.join(logdir, "rspamd.log")
        self.proc = popen(["rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd",
                           "-c", "/etc/rspamd/rspamd.conf",
                           "--var=LOCAL_CONFDIR=" + local, "--var=RUNDIR=" + run,
                           "--var=DBDIR=" + db, "--var=LOGDIR=" + logdir],
                          os.path.join(d, "rspamd.out"))
        self.pid = self.proc.pid
        if not compare.wait_port(11332, 120) or not compare.wait_port(11333, 60):
            self.stop()
            raise Failed("rspamd did not listen; see " + self.log_path)
        # Regexps run through PCRE until the Hyperscan databases are loaded.
        if wait_log(self.log_path, "hyperscan database of", 400):
            log("  rspamd listening, Hyperscan databases loaded")
        else:
            log("  rspamd: no 'hyperscan database' line in its log after 400 s; timing anyway")

    def scans(self):
        try:
            return open(self.log_path, errors="replace").read().count("rspamd_task_write_log")
        except OSError:
            return 0

    def stop(self):
        stop_proc(self.proc, "rspamd", timeout=60)


class PostfixRspamd:
    name = "postfix+rspamd"
    header = rules_header = b"X-Spamd-Result:"

    def __init__(self, args, tmp, sink_port):
        self.rspamd = Rspamd(args, tmp)
        self.port = compare.free_port()
        try:
            self.pf = compare.Postfix(tmp, self.port, sink_port, name="postfix-rspamd",
                                      extra_main_cf=MILTER_CF.format(port=11332))
        except RuntimeError:
            self.rspamd.stop()
            raise
        self.roots = [self.pf.pid, self.rspamd.pid]

    def spam_verdict(self, dump):
        return dump_header(dump, b"X-Spam-Status:").startswith(b"Yes")

    def scans(self):
        return self.rspamd.scans()

    def stop(self):
        self.pf.stop()
        self.rspamd.stop()


# ---- checks and runs --------------------------------------------------------------

def dump_header(dump, name):
    """Value of the first header `name` in a smtp-sink dump (envelope lines, then
    the message), unfolded, b"" when absent. Names compare case-insensitively."""
    head = dump.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    lname = name.lower()
    lines = head.split(b"\n")
    for i, line in enumerate(lines):
        if line.lower().startswith(lname):
            value = [line[len(name):].strip()]
            for cont in lines[i + 1:]:
                if not cont[:1] in (b" ", b"\t"):
                    break
                value.append(cont.strip())
            return b" ".join(value)
    return b""


def rule_names(verdict):
    """Rule names in a verdict header: SpamAssassin's and mxgate's `tests=A,B`,
    Rspamd's `SYMBOL(score)[...]`."""
    text = verdict.decode("ascii", "replace")
    m = re.search(r"tests=([A-Za-z0-9_,\s]*?)(?:\s+autolearn=|\s+version=|$)", text)
    if m:
        return [t for t in re.split(r"[,\s]+", m.group(1)) if t and t != "none"]
    return re.findall(r"\b([A-Z][A-Z0-9_]+)\(", text)


def take_dumps(dump_dir):
    """Contents of every message smtp-sink dumped since the last call, removed."""
    out = []
    for root, _dirs, files in os.walk(dump_dir):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                out.append(fh.read())
            os.unlink(p)
    return out


def read_sample(path):
    data = open(path, "rb").read()
    return data if b"\r\n" in data else data.replace(b"\n", b"\r\n")


def check_verdicts(system, sink, dump_dir):
    """GTUBE must be judged spam (tagged, or refused at DATA), the clean sample
    clean: proof the scanner is really in the path."""
    take_dumps(dump_dir)
    m0 = sink.mesg
    refused = None
    with smtplib.SMTP("127.0.0.1", system.port, timeout=120) as s:
        try:
            s.sendmail("check@mxcompare.test", ["gtube@example.test"], read_sample(GTUBE_FILE))
        except smtplib.SMTPDataError as e:
            refused = e
        s.sendmail("check@mxcompare.test", ["ham@example.test"], read_sample(HAM_FILE))
    want = 1 if refused else 2
    if not sink.wait_for(m0 + want, 60):
        raise Failed("%s: check messages not delivered" % system.name)
    time.sleep(0.3)
    dumps = take_dumps(dump_dir)
    gtube = [d for d in dumps if b"gtube@example.test" in d]
    ham = [d for d in dumps if d not in gtube]
    if refused:
        if refused.smtp_code // 100 != 5:
            raise Failed("%s: GTUBE refused with %d" % (system.name, refused.smtp_code))
        gtube_txt = "refused: %d %s" % (refused.smtp_code, refused.smtp_error.decode()[:60])
    else:
        if len(gtube) != 1 or not system.spam_verdict(gtube[0]):
            raise Failed("%s: GTUBE not tagged as spam: %r" % (
                system.name, [dump_header(d, system.header) for d in gtube]))
        gtube_txt = "tagged: %s" % dump_header(gtube[0], system.header).decode()[:70]
    if len(ham) != 1 or not dump_header(ham[0], system.header) or system.spam_verdict(ham[0]):
        raise Failed("%s: clean sample not delivered with a clean verdict header" % system.name)
    log("  check %s: GTUBE %s" % (system.name, gtube_txt))
    log("  check %s: clean sample: %s" % (
        system.name, dump_header(ham[0], system.header).decode()[:70]))
    return gtube_txt


def cpu_s(roots):
    return sum(compare.tree_cpu_s(r) for r in roots)


def run_smtp(args, system, sink, dump_dir):
    """One timed run through the SMTP path of `system`; every delivered message
    must carry the system's verdict header."""
    take_dumps(dump_dir)
    load = os.getloadavg()[0]  # the 2 cores are shared: say how busy they were
    scans0 = system.scans()
    cpu0, mesg0 = cpu_s(system.roots), sink.mesg
    t0 = time.time()
    r = subprocess.run([args.mxbench, "smtp", "--json", "--target", "127.0.0.1:%d" % system.port,
                        "--connections", str(args.conns), "--messages", str(args.messages),
                        "--duration", str(args.max_seconds), "--corpus", args.corpus,
                        "--pipelining", "--timeout", "300"],
                       capture_output=True, text=True, timeout=args.max_seconds + 600)
    if r.returncode != 0:
        raise Failed("mxbench: " + r.stderr[-2000:])
    res = json.loads(r.stdout)
    delivered_all = sink.wait_for(mesg0 + res["accepted"], args.deliver_timeout)
    t_deliv = time.time() - t0
    time.sleep(0.5)  # let the last delivery's bookkeeping finish before reading CPU
    cpu = cpu_s(system.roots) - cpu0
    delivered = sink.mesg - mesg0
    dumps = take_dumps(dump_dir)
    unscanned = sum(1 for d in dumps if not dump_header(d, system.header))
    spam = sum(1 for d in dumps if system.spam_verdict(d))
    hits = {}
    for d in dumps:
        for rule in rule_names(dump_header(d, system.rules_header)):
            hits[rule] = hits.get(rule, 0) + 1
    top = sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    acc = max(res["accepted"], 1)
    row = {
        "system": system.name, "path": "smtp", "connections": args.conns,
        "started": res["started"], "accepted": res["accepted"], "delivered": delivered,
        "delivered_all": delivered_all, "reply_codes": res["reply_codes"],
        "errors": res["errors"]["total"],
        "accept_rate": res["messages_per_s"],
        "deliver_rate": delivered / t_deliv if t_deliv > 0 else 0.0,
        "cpu_s": cpu, "cpu_s_per_msg": cpu / acc,
        "latency_p50_ms": res["latency_ms"]["p50"], "latency_p99_ms": res["latency_ms"]["p99"],
        "dumps": len(dumps), "unscanned": unscanned, "tagged_spam": spam,
        "top_rules": top, "loadavg_1m_before": load,
    }
    log("   ", json.dumps(row))
    if res["accepted"] == 0:
        raise Failed("%s accepted nothing: %s" % (system.name, res["reply_codes"]))
    if unscanned:
        raise Failed("%s: %d of %d delivered messages carry no %s header: not scanned" % (
            system.name, unscanned, len(dumps), system.header.decode()))
    if scans0 is not None:
        row["scans_logged"] = system.scans() - scans0
        if row["scans_logged"] < res["accepted"]:
            raise Failed("%s: %d messages accepted, %d scans in the scanner's log" % (
                system.name, res["accepted"], row["scans_logged"]))
    if len(dumps) != delivered:
        raise Failed("%s: sink counted %d messages, dumped %d" % (
            system.name, delivered, len(dumps)))
    return row


def corpus_files(corpus):
    files = []
    for root, _dirs, names in os.walk(corpus):
        files += [os.path.join(root, n) for n in names]
    return sorted(files)


def run_spamc(args, spamd):
    """Scan only: spamc -> spamd over the corpus files (cycled up to --messages),
    --children clients at a time. CPU: spamd's processes (spamc is the client)."""
    files = corpus_files(args.corpus)
    jobs = [files[i % len(files)] for i in range(args.messages)]
    deadline = time.time() + args.max_seconds

    def one(path):
        if time.time() > deadline:
            return None
        with open(path, "rb") as f:
            r = subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(spamd.port), "-x", "-c",
                                "-s", str(args.spamc_max_size)], stdin=f, capture_output=True,
                               timeout=600)
        out = r.stdout.decode(errors="replace").strip()
        if r.returncode not in (0, 1) or "/" not in out:
            raise Failed("spamc on %s: rc %d, %r %r" % (path, r.returncode, out, r.stderr[-300:]))
        return float(out.split("/")[0])

    load = os.getloadavg()[0]
    cpu0 = cpu_s([spamd.pid])
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(args.children) as ex:
        scores = [s for s in ex.map(one, jobs) if s is not None]
    dt = time.time() - t0
    cpu = cpu_s([spamd.pid]) - cpu0
    n = max(len(scores), 1)
    row = {"system": "spamc->spamd", "path": "scan", "connections": args.children,
           "started": len(scores), "accepted": len(scores), "delivered": len(scores),
           "accept_rate": len(scores) / dt, "deliver_rate": len(scores) / dt,
           "cpu_s": cpu, "cpu_s_per_msg": cpu / n,
           "tagged_spam": sum(1 for s in scores if s >= 5.0), "loadavg_1m_before": load}
    log("   ", json.dumps(row))
    return row


def run_mxbench_scan(args):
    """Scan only: `mxbench scan` (mxgate's engine, one core, no SMTP) with the same
    rule files over the same corpus, passes enough for --messages scans. Its own
    CPU-time figure is used (the corpus load and its memchr/memcpy reference
    passes are not scanning); msg/s is over its wall-clock scan time."""
    nfiles = len(corpus_files(args.corpus))
    repeat = max(1, -(-args.messages // nfiles))
    cmd = [args.mxbench, "scan", "--corpus", args.corpus, "--repeat", str(repeat),
           "--cache", os.path.join(args.cache_dir, "mxbench-scan"), "--json"]
    for r in SA_RULE_DIRS:
        cmd += ["--rules", r]
    load = os.getloadavg()[0]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.max_seconds + 600)
    if r.returncode != 0:
        raise Failed("mxbench scan: " + r.stderr[-2000:])
    res = json.loads(r.stdout)
    n = res["messages"] * res["repeat"]
    if res["hits"] == 0:
        raise Failed("mxbench scan: no rule hit in the whole corpus: not scanning")
    row = {"system": "mxbench scan", "path": "scan", "connections": 1,
           "started": n, "accepted": n, "delivered": n,
           "accept_rate": n / res["scan_wall_seconds"],
           "deliver_rate": n / res["scan_wall_seconds"],
           "cpu_s": res["scan_cpu_seconds"], "cpu_s_per_msg": res["scan_cpu_seconds"] / n,
           "tagged_spam": res["spam"] * res["repeat"], "rule_hits_per_pass": res["hits"],
           "rules_from_cache": res["from_cache"], "loadavg_1m_before": load}
    log("   ", json.dumps(row))
    return row


def mxbench_has_scan(mxbench):
    r = subprocess.run([mxbench, "scan", "--help"], capture_output=True, text=True, timeout=30)
    return r.returncode == 0 and "--rules" in (r.stdout + r.stderr)


# ---- table -------------------------------------------------------------------------

def fmt_table(rows):
    hdr = "%-15s %-5s %5s %8s %9s %10s %11s %8s %8s" % (
        "system", "path", "conns", "accepted", "accept/s", "deliver/s", "cpu s/msg",
        "x msg/s", "x cpu")
    out = [hdr, "-" * len(hdr)]
    ref = {r["path"]: r for r in rows if r["system"].startswith("mxgate") or
           r["system"].startswith("mxbench")}
    for r in rows:
        m = ref.get(r["path"])

        def q(a, b):
            return "%.2fx" % (a / b) if m and b else "n/a"
        out.append("%-15s %-5s %5d %8d %9.2f %10.2f %11.5f %8s %8s" % (
            r["system"], r["path"], r["connections"], r["accepted"], r["accept_rate"],
            r["deliver_rate"], r["cpu_s_per_msg"],
            q(r["deliver_rate"], m["deliver_rate"]) if m else "n/a",
            q(r["cpu_s_per_msg"], m["cpu_s_per_msg"]) if m else "n/a"))
    out.append("x msg/s, x cpu: the system's delivered msg/s and CPU s/msg over mxgate's "
               "(same path: smtp, or scan only)")
    return "\n".join(out)


def sink_dump_dir(tmp):
    """Where smtp-sink writes its copies: memory, not the disk the spools are on."""
    return os.path.join("/dev/shm", os.path.basename(tmp) + "-sink")


# ---- inside the namespaces -----------------------------------------------------------

def inner(args):
    tmp = args.tmp
    # ip netns exec gave us a mount namespace of our own (slave of the host's):
    # this bind mount is invisible outside it.
    conf = os.path.join(tmp, "resolv.conf")
    open(conf, "w").write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    subprocess.run(["mount", "--bind", conf, "/etc/resolv.conf"], check=True)
    rows, checks = [], {}
    started = []
    resolver = sink = spamd = dump_dir = None
    try:
        resolver = Resolver(tmp)
        started.append(resolver)
        if not args.corpus:
            args.corpus = os.path.join(tmp, "corpus")
            subprocess.run([args.mxbench, "gen", "--seed", str(args.seed), "--count",
                            str(args.count), "--out", args.corpus], check=True,
                           stdout=subprocess.DEVNULL)
        # the sink's copies go to memory, not to the disk the spools are on
        dump_dir = owned_dir(sink_dump_dir(tmp), "nobody")
        sink = compare.Sink(compare.free_port(), dump_dir=dump_dir)
        systems = args.systems.split(",")
        for name in systems:
            log("== %s" % name)
            if name == "mxgate":
                s = MxgateSA(args, tmp, sink.port)
            elif name == "postfix-sa":
                spamd = spamd or Spamd(args, tmp)
                s = PostfixSA(args, tmp, sink.port, spamd)
            elif name == "postfix-rspamd":
                s = PostfixRspamd(args, tmp, sink.port)
            elif name == "spamd-scan":
                spamd = spamd or Spamd(args, tmp)
                rows.append(run_spamc(args, spamd))
                continue
            elif name == "mxbench-scan":
                if not mxbench_has_scan(args.mxbench):
                    log("  mxbench has no 'scan' command: mxgate's scan-only row left out")
                    continue
                rows.append(run_mxbench_scan(args))
                continue
            else:
                raise Failed("unknown system " + name)
            try:
                checks[s.name] = check_verdicts(s, sink, dump_dir)
                log("  %s: %d messages, %d connections" % (s.name, args.messages, args.conns))
                rows.append(run_smtp(args, s, sink, dump_dir))
            finally:
                s.stop()
        if spamd:
            spamd.stop()
        rows_dns = resolver.queries()
    finally:
        if spamd:
            spamd.stop()
        if sink:
            sink.stop()
        if resolver:
            resolver.stop()
        if dump_dir:
            shutil.rmtree(dump_dir, ignore_errors=True)
    vers = versions()
    print(fmt_table(rows))
    for r in rows:
        if r.get("top_rules"):
            print("%s, rules hit most (of %d delivered, %d tagged spam): %s" % (
                r["system"], r["delivered"], r["tagged_spam"],
                ", ".join("%s %d" % kv for kv in r["top_rules"])))
    print("verdict checks: " + "; ".join("%s GTUBE %s" % kv for kv in checks.items()))
    print("queries answered NXDOMAIN by the private resolver: %d" % rows_dns)
    print("versions: " + ", ".join("%s %s" % kv for kv in vers.items()))
    if args.json:
        json.dump({"rows": rows, "checks": checks, "dns_queries": rows_dns, "versions": vers},
                  open(args.json, "w"), indent=1)


def versions():
    out = {}
    for pkg in ("postfix", "spamassassin", "spamd", "spamass-milter", "rspamd", "dnsmasq"):
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True,
                           text=True, timeout=30)
        out[pkg] = r.stdout.strip() or "?"
    return out


# ---- outside: namespace set-up and clean-up -----------------------------------------

def outer(args, argv):
    if os.geteuid() != 0:
        sys.exit("compare_scan.py needs root (network namespace, private daemons)")
    for tool in ("postfix", "/usr/sbin/smtp-sink", "spamass-milter", "spamd", "spamc", "rspamd",
                 "dnsmasq", "ip", "setpriv"):
        if not shutil.which(tool):
            sys.exit("missing %s (apt-get install postfix spamass-milter spamd spamc rspamd "
                     "dnsmasq)" % tool)
    ns = "mxcmp%d" % os.getpid()
    tmp = tempfile.mkdtemp(prefix="mxcompare-scan-")
    os.chmod(tmp, 0o755)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    rc = 1
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        cmd = ["ip", "netns", "exec", ns, sys.executable, os.path.abspath(__file__),
               "--inner", "--tmp", tmp] + argv
        # the inner run's own bound: every timed run is bounded by --max-seconds,
        # set-ups by their own timeouts; this is the last resort
        limit = len(args.systems.split(",")) * (args.max_seconds + 900)
        try:
            rc = subprocess.run(cmd, timeout=limit).returncode
        except subprocess.TimeoutExpired:
            log("inner run exceeded %d s" % limit)
    finally:
        left = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split()
        for pid in left:  # only processes of this run live in this namespace
            log("killing leftover pid %s in %s" % (pid, ns))
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(sink_dump_dir(tmp), ignore_errors=True)
    return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mxbench", required=True)
    ap.add_argument("--mxgate", required=True)
    ap.add_argument("--mxgate-workers", type=int, default=2)
    ap.add_argument("--corpus", help="folder of messages; default: mxbench gen --seed/--count")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--messages", type=int, default=300, help="messages per run")
    ap.add_argument("--conns", type=int, default=10, help="SMTP connections")
    ap.add_argument("--children", type=int, default=2,
                    help="spamd children, and spamc clients in the scan-only run")
    ap.add_argument("--spamc-max-size", type=int, default=8 * 1024 * 1024,
                    help="spamc -s: bigger messages pass unscanned (spamc's default: 500 KB)")
    ap.add_argument("--max-seconds", type=int, default=600, help="bound of each timed run")
    ap.add_argument("--deliver-timeout", type=float, default=300)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--cache-dir", default="/var/tmp/mxcompare-cache",
                    help="compiled-rule caches kept across runs (mxgate, rspamd)")
    ap.add_argument("--json", help="write rows and checks as JSON here")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = ap.parse_args()
    args.cache_mxgate = os.path.join(args.cache_dir, "mxgate")
    args.cache_rspamd = os.path.join(args.cache_dir, "rspamd")
    for a in ("mxbench", "mxgate", "corpus", "json"):
        if getattr(args, a):
            setattr(args, a, os.path.abspath(getattr(args, a)))
    if args.inner:
        try:
            inner(args)
        except Failed as e:
            log("FAILED: %s" % e)
            sys.exit(1)
        return
    sys.exit(outer(args, [a if not os.path.exists(a) else os.path.abspath(a) for a in argv]))


if __name__ == "__main__":
    main()
