#!/usr/bin/python3
"""compare.py - mxgate against Postfix, side by side, on this machine, in one run.

Each server relays everything to the same Postfix `smtp-sink`; `mxbench smtp`
sends the same corpus at 1, 10 and 100 concurrent connections. Per run:

  accepted msg/s   messages that got 250, over mxbench's elapsed time
  delivered msg/s  the same messages, over the time until the last one
                   reached smtp-sink (its -c message counter)
  fsync/msg        ext4 fsync/fdatasync calls of the server's processes per
                   accepted message: the kernel tracepoint
                   ext4:ext4_sync_file_enter, recorded system-wide with
                   `perf record -a` and attributed to the server by process
                   id (and, for Postfix's short-lived daemons, by name). The
                   tracepoint fires for fsync(2), fdatasync(2) and io_uring
                   IORING_OP_FSYNC alike, which strace would not see.
  CPU ms/msg       utime+stime of the server's process tree (from
                   /proc/PID/stat, plus the master's cutime+cstime for
                   children it reaped), per accepted message
  mxgate x         mxgate's value over Postfix's (rates: higher is better
                   for mxgate; fsync and CPU: lower is better)

Postfix runs as a private instance in a temporary directory (its own
config_directory, queue_directory and data_directory, smtpd on 127.0.0.1:
<port>, relayhost [127.0.0.1]:<sink port>), started with
`postfix -c DIR start` and stopped and removed afterwards. The system
Postfix configuration is never read or written. Only loopback is used.

Usage:
  compare.py --mxbench build/perf/mxbench [--mxgate build/app/mxgate]
             [--corpus DIR | --seed N --count N] [--messages N]
             [--conns 1,10,100] [--json FILE] [--keep]
Needs root (perf tracepoints, Postfix), postfix, perf (linux-perf).
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
POSTFIX_DAEMONS = {"master", "smtpd", "cleanup", "qmgr", "smtp", "pickup", "bounce",
                   "trivial-rewrite", "tlsmgr", "anvil", "scache", "postlogd", "proxymap",
                   "verify", "flush", "showq", "error"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


# ---- process accounting ---------------------------------------------------

def proc_stat(pid):
    """(ppid, comm, utime+stime, cutime+cstime) in ticks, or None."""
    try:
        s = open("/proc/%d/stat" % pid).read()
    except OSError:
        return None
    comm = s[s.index("(") + 1:s.rindex(")")]
    f = s[s.rindex(")") + 2:].split()
    return int(f[1]), comm, int(f[11]) + int(f[12]), int(f[13]) + int(f[14])


def tree(root):
    """Pids of root and all its descendants now."""
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st:
                kids.setdefault(st[0], []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_cpu_s(root):
    """Cumulative CPU seconds of root's tree: every live process's own time plus
    the time of the children it reaped. A finished process's time moves into its
    parent's cutime when the parent waits for it, so each process is counted
    once whichever process of the tree reaps it (Postfix's master reaps smtpd,
    spamass-milter its spamc, spamd and rspamd their workers)."""
    ticks = 0
    for p in tree(root):
        st = proc_stat(p)
        if st:
            ticks += st[2] + st[3]
    return ticks / CLK_TCK


class PidWatcher(threading.Thread):
    """Collects every pid of a process tree while a run goes (short-lived ones too)."""

    def __init__(self, root):
        super().__init__(daemon=True)
        self.root, self.pids, self.stop_ev = root, set(), threading.Event()

    def run(self):
        while not self.stop_ev.is_set():
            self.pids.update(tree(self.root))
            self.stop_ev.wait(0.05)

    def stop(self):
        self.stop_ev.set()
        self.join()
        self.pids.update(tree(self.root))
        return self.pids


class FsyncCounter:
    """perf record of ext4:ext4_sync_file_enter, system-wide, for one run."""

    def __init__(self, tmp):
        self.path = os.path.join(tmp, "perf.data")
        self.proc = subprocess.Popen(["perf", "record", "-q", "-a", "-e",
                                      "ext4:ext4_sync_file_enter", "-o", self.path],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let perf open its events

    def stop(self, pids, comms):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=30)
        out = subprocess.run(["perf", "script", "-i", self.path, "-F", "comm,pid"],
                             capture_output=True, text=True, timeout=120).stdout
        n = 0
        for line in out.splitlines():
            m = re.match(r"\s*(.*?)\s+(\d+)\s*$", line)
            if m and (int(m.group(2)) in pids or m.group(1) in comms):
                n += 1
        os.unlink(self.path)
        return n


# ---- smtp-sink ----------------------------------------------------------------

class Sink:
    """Postfix's smtp-sink with its message counter (-c) read from its stdout."""

    def __init__(self, port, dump_dir=None):
        """dump_dir: also write every message (envelope + content) to a file there
        (smtp-sink -d), for scripts that check what was delivered."""
        self.port, self.mesg = port, 0
        dump = ["-d", os.path.join(dump_dir, "msg.")] if dump_dir else []
        self.proc = subprocess.Popen(["/usr/sbin/smtp-sink", "-c", "-u", "nobody"] + dump +
                                     ["127.0.0.1:%d" % port, "1024"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        threading.Thread(target=self._read, daemon=True).start()
        if not wait_port(port):
            raise RuntimeError("smtp-sink did not start")

    def _read(self):
        buf = b""
        while True:
            d = self.proc.stdout.read1(4096)
            if not d:
                return
            buf = (buf + d)[-256:]
            m = re.findall(rb"mesg=(\d+)", buf)
            if m:
                self.mesg = int(m[-1])

    def wait_for(self, count, timeout):
        end = time.time() + timeout
        while time.time() < end and self.mesg < count:
            time.sleep(0.005)
        return self.mesg >= count

    def stop(self):
        self.proc.kill()
        self.proc.wait()


# ---- servers -----------------------------------------------------------------------

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
proxywrite unix - - n -  1 proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
local     unix  - n n -  - local
virtual   unix  - n n -  - virtual
lmtp      unix  - - n -  - lmtp
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix-bench.example.test
mydomain = example.test
myorigin = example.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{sink}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
default_process_limit = 300
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
message_size_limit = 52428800
biff = no
append_dot_mydomain = no
"""


class Postfix:
    name = "postfix"
    comms = POSTFIX_DAEMONS

    def __init__(self, tmp, port, sink, name="postfix", extra_main_cf=""):
        """A private instance in tmp/<name>; extra_main_cf: more main.cf lines
        (milters, for instance)."""
        self.name = name
        self.d = os.path.join(tmp, name)
        self.cfg = os.path.join(self.d, "etc")
        os.makedirs(self.cfg)
        for sub in ("queue", "data"):
            os.makedirs(os.path.join(self.d, sub))
        shutil.chown(os.path.join(self.d, "data"), "postfix", "postfix")
        open(os.path.join(self.cfg, "main.cf"), "w").write(MAIN_CF.format(d=self.d, sink=sink) +
                                                         extra_main_cf)
        open(os.path.join(self.cfg, "master.cf"), "w").write(MASTER_CF.format(port=port))
        self.port = port
        r = subprocess.run(["postfix", "-c", self.cfg, "start"], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError("postfix start: " + r.stdout + r.stderr)
        if not wait_port(port):
            raise RuntimeError("postfix smtpd did not listen; see %s/maillog" % self.d)
        self.pid = int(open(os.path.join(self.d, "queue", "pid", "master.pid")).read().strip())

    def stop(self):
        subprocess.run(["postfix", "-c", self.cfg, "stop"], capture_output=True, timeout=60)
        for _ in range(100):
            if not os.path.exists("/proc/%d" % self.pid):
                break
            time.sleep(0.1)
        else:
            os.kill(self.pid, signal.SIGKILL)


MXGATE_CONF = """\
listen {{ smtp = [ "127.0.0.1:{port}" ]; }}
dataplane {{ backend = "kernel"; workers = {workers}; }}
spool {{ dir = "{d}/spool"; }}
control {{ socket = "{d}/mxgate.sock"; http = ""; }}
smtp {{ hostname = "mxgate-bench.example.test"; }}
routes {{ "*" = "smtp:127.0.0.1:{sink}"; }}
relay_domains = [ "example.test" ];
trusted_networks = [ "127.0.0.0/8" ];
"""


class Mxgate:
    name = "mxgate"
    comms = set()

    def __init__(self, tmp, port, sink, binary, workers, name="mxgate", extra_conf="",
                 start_timeout=20.0):
        """extra_conf: more config lines (scan rules, for instance); start_timeout:
        seconds to wait for the listener (rule compilation happens before it)."""
        self.name, self.port = name, port
        self.d = os.path.join(tmp, name)
        os.makedirs(os.path.join(self.d, "spool"), exist_ok=True)
        conf = os.path.join(self.d, "mxgate.conf")
        open(conf, "w").write(MXGATE_CONF.format(d=self.d, port=port, sink=sink, workers=workers)
                              + extra_conf)
        self.log = open(os.path.join(self.d, "mxgate.log"), "w")
        self.proc = subprocess.Popen([binary, "-c", conf], stdout=self.log, stderr=self.log)
        self.pid = self.proc.pid
        if not wait_port(port, start_timeout):
            self.stop()
            raise RuntimeError("mxgate did not listen; see %s/mxgate.log" % self.d)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


# ---- one measurement ------------------------------------------------------------

def measure(args, server, sink, tmp, conns):
    fs = FsyncCounter(tmp)
    watch = PidWatcher(server.pid)
    watch.start()
    cpu0, mesg0 = tree_cpu_s(server.pid), sink.mesg
    t0 = time.time()
    r = subprocess.run([args.mxbench, "smtp", "--json", "--target", "127.0.0.1:%d" % server.port,
                        "--connections", str(conns), "--messages", str(args.messages),
                        "--corpus", args.corpus, "--pipelining", "--timeout", "60"],
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError("mxbench: " + r.stderr)
    res = json.loads(r.stdout)
    delivered_all = sink.wait_for(mesg0 + res["accepted"], args.deliver_timeout)
    t_deliv = time.time() - t0
    time.sleep(0.2)  # let the last delivery's bookkeeping finish before reading CPU
    cpu = tree_cpu_s(server.pid) - cpu0
    pids = watch.stop()
    fsyncs = fs.stop(pids, server.comms)
    acc = max(res["accepted"], 1)
    return {
        "server": server.name, "connections": conns, "started": res["started"],
        "accepted": res["accepted"], "delivered": sink.mesg - mesg0,
        "delivered_all": delivered_all,
        "accept_rate": res["messages_per_s"],
        "deliver_rate": (sink.mesg - mesg0) / t_deliv if t_deliv > 0 else 0,
        "latency_p50_ms": res["latency_ms"]["p50"], "latency_p99_ms": res["latency_ms"]["p99"],
        "fsync_per_msg": fsyncs / acc, "fsyncs": fsyncs,
        "cpu_ms_per_msg": cpu * 1000 / acc, "cpu_s": cpu,
        "errors": res["errors"]["total"], "reply_codes": res["reply_codes"],
    }


def fmt_table(rows):
    by = {(r["server"], r["connections"]): r for r in rows}
    hdr = ("%-8s %5s %9s %10s %10s %9s %10s %8s %8s" %
           ("server", "conns", "accepted", "accept/s", "deliver/s", "fsync/msg", "cpu ms/msg",
            "p50 ms", "p99 ms"))
    out = [hdr, "-" * len(hdr)]
    for r in rows:
        out.append("%-8s %5d %9d %10.1f %10.1f %9.2f %10.2f %8.2f %8.2f" % (
            r["server"], r["connections"], r["accepted"], r["accept_rate"], r["deliver_rate"],
            r["fsync_per_msg"], r["cpu_ms_per_msg"], r["latency_p50_ms"], r["latency_p99_ms"]))
    ratios = []
    for (srv, c), r in sorted(by.items()):
        m = by.get(("mxgate", c))
        if srv == "postfix" and m:
            def q(a, b):
                return "%.2fx" % (a / b) if b else "n/a"
            ratios.append("%5d  %10s %10s %10s %10s" % (
                c, q(m["accept_rate"], r["accept_rate"]), q(m["deliver_rate"], r["deliver_rate"]),
                q(m["fsync_per_msg"], r["fsync_per_msg"]), q(m["cpu_ms_per_msg"], r["cpu_ms_per_msg"])))
    if ratios:
        out += ["", "mxgate / postfix:", "conns  %10s %10s %10s %10s" % (
            "accept/s", "deliver/s", "fsync/msg", "cpu/msg")] + ratios
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mxbench", required=True)
    ap.add_argument("--mxgate", help="mxgate binary; without it only Postfix is measured")
    ap.add_argument("--mxgate-workers", type=int, default=2)
    ap.add_argument("--corpus", help="corpus folder; default: generated from --seed/--count")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--messages", type=int, default=1000, help="messages per run")
    ap.add_argument("--conns", default="1,10,100")
    ap.add_argument("--deliver-timeout", type=float, default=300)
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--servers", default="mxgate,postfix")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("compare.py needs root (perf tracepoints, a private Postfix instance)")
    for tool in ("postfix", "perf", "/usr/sbin/smtp-sink"):
        if not shutil.which(tool):
            sys.exit("missing %s (apt-get install postfix linux-perf)" % tool)
    tmp = tempfile.mkdtemp(prefix="mxcompare-")
    os.chmod(tmp, 0o755)
    rows = []
    try:
        if not args.corpus:
            args.corpus = os.path.join(tmp, "corpus")
            subprocess.run([args.mxbench, "gen", "--seed", str(args.seed), "--count",
                            str(args.count), "--out", args.corpus], check=True)
        sink = Sink(free_port())
        servers = [s for s in args.servers.split(",") if s != "mxgate" or args.mxgate]
        try:
            for name in servers:
                port = free_port()
                log("starting", name)
                try:
                    srv = (Mxgate(tmp, port, sink.port, args.mxgate, args.mxgate_workers)
                           if name == "mxgate" else Postfix(tmp, port, sink.port))
                except RuntimeError as e:
                    log("%s: %s" % (name, e))
                    continue
                try:
                    for c in [int(x) for x in args.conns.split(",")]:
                        log("  %s, %d connection(s), %d messages" % (name, c, args.messages))
                        row = measure(args, srv, sink, tmp, c)
                        log("   ", json.dumps(row))
                        rows.append(row)
                finally:
                    srv.stop()
        finally:
            sink.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(fmt_table(rows))
    if args.json:
        json.dump(rows, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
