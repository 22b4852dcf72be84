"""mxtest - helpers for integration tests that run a real mxgate.

Each test gets a private directory (spool, maildir, control socket, config),
a free loopback port, and the gateway as a child process it stops by PID.
Everything is bounded in time; nothing leaves loopback.
"""
import email
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=15.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def skip(msg):
    print("SKIP:", msg)
    sys.exit(77)


def need(prog):
    if shutil.which(prog) is None:
        skip(prog + " is not installed")


class Gateway:
    """A running mxgate with its own directory."""

    def __init__(self, mxgate, extra="", workers=2, routes=None, relay_domains=None,
                 trusted=None, keep_dir=None):
        self.mxgate = os.path.abspath(mxgate)
        self.mxctl = os.path.join(os.path.dirname(self.mxgate), "mxctl")
        self.http_port = free_port()
        self.dir = keep_dir or tempfile.mkdtemp(prefix="mxgate-test-")
        self.port = free_port()
        self.maildir = os.path.join(self.dir, "maildir")
        self.socket = os.path.join(self.dir, "mxgate.sock")
        self.log_path = os.path.join(self.dir, "mxgate.log")
        routes = routes or {"*": "maildir:" + self.maildir}
        route_lines = "\n".join('  "%s" = "%s";' % (k, v) for k, v in routes.items())
        relay = relay_domains if relay_domains is not None else ["example.test"]
        conf = [
            'listen { smtp = [ "127.0.0.1:%d" ]; }' % self.port,
            "dataplane { backend = \"kernel\"; workers = %d; }" % workers,
            'spool { dir = "%s"; }' % os.path.join(self.dir, "spool"),
            'control { socket = "%s"; http = "127.0.0.1:%d"; }' % (self.socket, self.http_port),
            'smtp { hostname = "mx.test.invalid"; }',
            "routes {\n%s\n}" % route_lines,
            "relay_domains = [ %s ];" % ", ".join('"%s"' % d for d in relay),
        ]
        if trusted is not None:
            conf.append("trusted_networks = [ %s ];" % ", ".join('"%s"' % t for t in trusted))
        conf.append(extra)
        self.conf = os.path.join(self.dir, "mxgate.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        self.proc = None

    def start(self, timeout=15.0):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.mxgate, "-c", self.conf], stdout=self.logf,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        if not wait_port(self.port, timeout):
            self.stop()
            raise RuntimeError("mxgate did not start; log:\n" + self.log())
        return self

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, timeout=20.0):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise RuntimeError("mxgate did not stop on SIGTERM")
        rc = self.proc.returncode if self.proc else 0
        self.proc = None
        if getattr(self, "logf", None):
            self.logf.close()
        return rc

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        self.logf.close()

    def ctl(self, *args, check=True):
        r = subprocess.run([self.mxctl, "-s", self.socket] + list(args), capture_output=True,
                           timeout=20)
        if check and r.returncode != 0:
            raise RuntimeError("mxctl %s failed: %s" % (args, r.stderr.decode()))
        return r.stdout.decode()

    def maildir_messages(self, maildir=None):
        d = os.path.join(maildir or self.maildir, "new")
        out = []
        if not os.path.isdir(d):
            return out
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                out.append(f.read())
        return out

    def wait_maildir(self, count, timeout=30.0, maildir=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.maildir_messages(maildir)
            if len(msgs) >= count:
                return msgs
            time.sleep(0.1)
        return self.maildir_messages(maildir)

    def cleanup(self):
        if self.proc:
            try:
                self.stop()
            except RuntimeError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def message_ids(raw_messages):
    ids = set()
    for raw in raw_messages:
        m = email.message_from_bytes(raw)
        if m["Message-ID"]:
            ids.add(m["Message-ID"].strip())
    return ids


class Failures:
    """Collects check failures so a test reports all of them, then exits 1."""

    def __init__(self):
        self.items = []

    def check(self, cond, what):
        if not cond:
            self.items.append(what)
            print("FAIL:", what)
        else:
            print("ok:", what)

    def finish(self, gw=None):
        if self.items:
            if gw is not None:
                print("---- mxgate log ----")
                print(gw.log()[-6000:])
            print("%d check(s) failed" % len(self.items))
            sys.exit(1)
        print("all checks passed")
        sys.exit(0)
