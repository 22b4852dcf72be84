#!/usr/bin/python3
"""postfix_peer.py - a private, throw-away Postfix instance whose smtpd
offers CHUNKING (BDAT), PIPELINING, 8BITMIME, DSN, SMTPUTF8, and relays
everything to 127.0.0.1:SINK_PORT (an smtp-sink the test started).

Usage: postfix_peer.py DIR SINK_PORT. Prints "PORT <n>" once smtpd listens,
then runs until its stdin closes; stops the instance on the way out.
Needs root and the postfix package; prints "SKIP <why>" and exits 0 otherwise.
"""
import os
import shutil
import socket
import subprocess
import sys
import time

MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

MAIN = """\
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix-peer.example.test
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{sink}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtputf8_enable = yes
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
meta_directory = /etc/postfix
biff = no
append_dot_mydomain = no
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def main():
    d, sink = sys.argv[1], int(sys.argv[2])
    if os.geteuid() != 0 or not shutil.which("postfix"):
        print("SKIP needs root and postfix", flush=True)
        return
    cfg = os.path.join(d, "etc")
    for sub in ("etc", "queue", "data"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    shutil.chown(os.path.join(d, "data"), "postfix", "postfix")
    port = free_port()
    with open(os.path.join(cfg, "main.cf"), "w") as f:
        f.write(MAIN.format(d=d, sink=sink))
    with open(os.path.join(cfg, "master.cf"), "w") as f:
        f.write(MASTER.format(port=port))
    r = subprocess.run(["postfix", "-c", cfg, "start"], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        print("SKIP postfix start failed: %s" % (r.stdout + r.stderr).replace("\n", " "), flush=True)
        return
    try:
        end = time.time() + 20
        while time.time() < end:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        print("PORT %d" % port, flush=True)
        sys.stdin.read()
    finally:
        subprocess.run(["postfix", "-c", cfg, "stop"], capture_output=True, timeout=60)


if __name__ == "__main__":
    main()
