#!/usr/bin/python3
"""Policy end to end against a running mxgate, with Python smtplib as the
client: sender block lists (global and per recipient), the allow list
overriding the spam action, the HELO blocklist, the per-address connection
limit, and each spam action (quarantine, reject, discard, tag) — the last
three switched by `mxctl reload` on one running gateway — plus the actions for
a banned attachment (reject) and a DLP hit (quarantine); then anti-virus at
SMTP time with a signature database the test writes (EICAR): an infected
attachment is refused with 554 at end of data, clean mail is delivered with
X-Virus-Status, and with on_infected = "quarantine" it is held instead; after a
reload with per-scope settings, a message whose every recipient has av = false is
delivered unscanned, one with mixed recipients is scanned (and quarantined), and
a quarantined message keeps the longest quarantine_retention of its recipients."""
import base64
import email
import json
import os
import smtplib
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mxtest  # noqa: E402

mxgate = sys.argv[1]
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
F = mxtest.Failures()


def msg(subject, body, mid):
    return (b"From: a@remote.invalid\r\nTo: user@example.test\r\nSubject: " + subject +
            b"\r\nMessage-ID: <" + mid + b"@t>\r\n\r\n" + body + b"\r\n")


def zip_mail(name, members, mid):
    """A message with a zip attachment `name` holding `members` (name, bytes),
    written with Python's zipfile."""
    import io
    import zipfile
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        for n, data in members:
            z.writestr(n, data)
    b64 = base64.encodebytes(b.getvalue()).replace(b"\n", b"\r\n")
    return (b"From: a@remote.invalid\r\nTo: user@example.test\r\nSubject: files\r\n"
            b"Message-ID: <" + mid + b"@t>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
            b"Content-Type: text/plain\r\n\r\nsee attached\r\n--zz\r\n"
            b"Content-Type: application/zip; name=\"" + name.encode() + b"\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64 + b"--zz--\r\n")


def rcpt_code(port, helo, sender, rcpt):
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=30) as s:
        s.ehlo()
        code, text = s.mail(sender)
        if code != 250:
            return code, text
        return s.rcpt(rcpt)


def policy_conf(d, action, extra=""):
    rules = os.path.join(d, "t.rules")
    with open(rules, "w") as f:
        f.write("body GTUBE /XJS\\*C4JDBQADN1\\.NSBN3\\*2IDNEN\\*GTUBE/\nscore GTUBE 1000\n"
                "attachment T_EXE ext=exe\nscore T_EXE 0.1\n"
                "dlp T_CARD creditcard min=1\nscore T_CARD 0.1\n")
    return ('scan { rules = [ "%s" ]; }\n'
            'policy { block = [ "*@spam.example", "ceo@example.test: boss@partner.example" ];\n'
            '  allow = [ "friend.example" ]; spam_action = "%s"; spam_subject_tag = "[SPAM]"; }\n'
            'helo { reject_defaults = true; block = [ "*.dynamic.example" ]; }\n%s'
            % (rules, action, extra))


# ---- gateway A: lists, HELO, limits, quarantine -------------------------
import tempfile  # noqa: E402
da = tempfile.mkdtemp(prefix="mxgate-policy-")
gw = mxtest.Gateway(mxgate, workers=1, trusted=["192.0.2.0/24"], keep_dir=da,
                    extra=policy_conf(da, "quarantine", "limits { conn_per_ip = 3; }\n"
                                      'policy { users { "boss@example.test" { spam_action = "tag"; }\n'
                                      '  "lenient@example.test" { spam_threshold = 5000; } } }\n'))
try:
    gw.start(timeout=60)
    p = gw.port
    code, text = rcpt_code(p, "client.example", "x@spam.example", "user@example.test")
    F.check(code == 550 and b"5.7.1" in text and b"blocked by policy" in text,
            "globally blocked sender refused at RCPT with 550 5.7.1 (%d %r)" % (code, text))
    code, _ = rcpt_code(p, "client.example", "boss@partner.example", "ceo@example.test")
    F.check(code == 550, "sender blocked for one recipient only: refused for that one (%d)" % code)
    code, _ = rcpt_code(p, "client.example", "boss@partner.example", "other@example.test")
    F.check(code == 250, "...and accepted for another recipient (%d)" % code)
    code, _ = rcpt_code(p, "client.example", "x+tag@spam.example", "user+news@example.test")
    F.check(code == 550, "sub-addressed forms resolve to the listed ones (%d)" % code)
    for helo in ("friend", "host.dynamic.example", "192.168.1.1"):
        code, text = rcpt_code(p, helo, "a@remote.invalid", "user@example.test")
        F.check(code == 550 and b"Helo command rejected" in text,
                "HELO '%s' refused at MAIL with 550 (%d %r)" % (helo, code, text))
    code, _ = rcpt_code(p, "mail.good.example", "a@remote.invalid", "user@example.test")
    F.check(code == 250, "a proper HELO name is accepted (%d)" % code)

    # three connections at once are allowed, the fourth gets 421
    held = []
    for i in range(3):
        c = socket.create_connection(("127.0.0.1", p), timeout=10)
        F.check(c.recv(512).startswith(b"220"), "connection %d greeted" % (i + 1))
        held.append(c)
    c4 = socket.create_connection(("127.0.0.1", p), timeout=10)
    line = c4.recv(512)
    F.check(line.startswith(b"421 4.7.0"), "fourth connection from one address: %r" % line)
    c4.close()
    held.pop().close()
    ok = False
    for _ in range(50):  # the slot comes back when the server sees the close
        c = socket.create_connection(("127.0.0.1", p), timeout=10)
        ok = c.recv(512).startswith(b"220")
        c.close()
        if ok:
            break
        time.sleep(0.1)
    F.check(ok, "after one closes, a new connection is greeted")
    for c in held:
        c.close()
    time.sleep(0.3)

    with smtplib.SMTP("127.0.0.1", p, local_hostname="client.example", timeout=30) as s:
        s.sendmail("a@remote.invalid", ["user@example.test"], msg(b"spam", GTUBE, b"q1"))
        s.sendmail("x@friend.example", ["user@example.test"], msg(b"friend", GTUBE, b"f1"))
        s.sendmail("a@remote.invalid", ["user@example.test"], msg(b"ham", b"hello", b"h1"))
        # per-user settings: boss tags instead of quarantining, lenient's threshold is
        # above the score; to boss and user together the more severe action (quarantine) wins
        s.sendmail("a@remote.invalid", ["boss@example.test"], msg(b"spam", GTUBE, b"b1"))
        s.sendmail("a@remote.invalid", ["lenient@example.test"], msg(b"spam", GTUBE, b"l1"))
        s.sendmail("a@remote.invalid", ["boss@example.test", "user@example.test"],
                   msg(b"spam", GTUBE, b"q2"))
    got = gw.wait_maildir(4, timeout=30)
    time.sleep(0.5)
    got = gw.maildir_messages()
    ids = mxtest.message_ids(got)
    F.check(sorted(ids) == ["<b1@t>", "<f1@t>", "<h1@t>", "<l1@t>"],
            "ham, the allow-listed sender's spam and the per-user ones delivered, "
            "quarantined spam not (%s)" % ids)
    b1 = [email.message_from_bytes(r) for r in got if b"<b1@t>" in r]
    F.check(b1 and b1[0]["Subject"] == "[SPAM] spam", "boss's own spam_action tag applied")
    lst = json.loads(gw.ctl("queue", "list", "--json"))
    items = lst if isinstance(lst, list) else lst.get("messages", [])
    q = [m for m in items if m.get("state") == "quarantine"]
    F.check(len(q) == 2 and all("spam score=1000" in m.get("reason", "") for m in q),
            "two messages in quarantine with their reason (%s)" % items)
    fr = [email.message_from_bytes(r) for r in got if b"<f1@t>" in r]
    F.check(fr and fr[0]["X-Spam-Status"].startswith("Yes"),
            "allow-listed spam keeps its verdict header")
    F.check(gw.stop() == 0, "clean stop")
finally:
    if F.items:
        print("---- mxgate A log (tail) ----\n" + gw.log()[-4000:])
    gw.cleanup()

# ---- gateway B: reject, discard, tag (switched by reload) ---------------
db = tempfile.mkdtemp(prefix="mxgate-policy-")
gw = mxtest.Gateway(mxgate, trusted=["192.0.2.0/24"], keep_dir=db, extra=policy_conf(
    db, "reject", 'policy { users { "dev@example.test" { attachment_allow = [ "T_EXE" ]; } } }\n'))
try:
    gw.start(timeout=60)
    p = gw.port
    with smtplib.SMTP("127.0.0.1", p, local_hostname="client.example", timeout=30) as s:
        try:
            s.sendmail("a@remote.invalid", ["user@example.test"], msg(b"spam", GTUBE, b"r1"))
            F.check(False, "spam_action reject: spam refused")
        except smtplib.SMTPDataError as e:
            F.check(e.smtp_code == 550 and b"5.7.1" in e.smtp_error,
                    "spam_action reject: 550 5.7.1 at end of data (%s)" % e)
        # the session goes on
        s.sendmail("a@remote.invalid", ["user@example.test"], msg(b"ham", b"hello", b"h2"))

    def reload_to(action):
        with open(gw.conf) as f:
            text = f.read()
        for a in ("reject", "discard", "tag", "quarantine"):
            text = text.replace('spam_action = "%s"' % a, 'spam_action = "%s"' % action)
        with open(gw.conf, "w") as f:
            f.write(text)
        out = gw.ctl("reload")
        F.check(out.startswith("reloaded"), "reload to spam_action %s (%s)" % (action, out.strip()))

    reload_to("discard")
    with smtplib.SMTP("127.0.0.1", p, local_hostname="client.example", timeout=30) as s:
        s.ehlo()
        s.mail("a@remote.invalid")
        s.rcpt("user@example.test")
        code, text = s.data(msg(b"spam", GTUBE, b"d1"))
        F.check(code == 250 and b"discarded" in text, "discard: 250 and dropped (%d %r)" % (code, text))
    reload_to("tag")
    with smtplib.SMTP("127.0.0.1", p, local_hostname="client.example", timeout=30) as s:
        s.sendmail("a@remote.invalid", ["user@example.test"], msg(b"hello there", GTUBE, b"t1"))
    exe = (b"From: a@remote.invalid\r\nTo: user@example.test\r\nSubject: invoice\r\n"
           b"Message-ID: <x1@t>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
           b"Content-Type: text/plain\r\n\r\nplease pay\r\n--zz\r\n"
           b"Content-Type: application/octet-stream; name=\"invoice.exe\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--zz--\r\n")
    with smtplib.SMTP("127.0.0.1", p, local_hostname="client.example", timeout=30) as s:
        try:
            s.sendmail("a@remote.invalid", ["user@example.test"], exe)
            F.check(False, "banned attachment refused")
        except smtplib.SMTPDataError as e:
            F.check(e.smtp_code == 550 and b"attachment type not allowed" in e.smtp_error,
                    "banned attachment (banned_action reject): 550 (%s)" % e)
        # an executable inside a zip: the 550 names the member
        try:
            s.sendmail("a@remote.invalid", ["user@example.test"], zip_mail(
                "invoice.zip", [("invoice.pdf", b"%PDF-1.4 not really\n"),
                                ("setup.exe", b"MZ\x90\x00 not really\n")], b"z1"))
            F.check(False, "exe inside a zip refused")
        except smtplib.SMTPDataError as e:
            F.check(e.smtp_code == 550 and
                    b"attachment type not allowed: invoice.zip/setup.exe" in e.smtp_error,
                    "exe inside a zip (banned_action reject): 550 naming the member (%s)" % e)
        # dev@ exempts T_EXE (attachment_allow): delivered to dev alone; with user@
        # among the recipients the strictest one decides
        s.sendmail("a@remote.invalid", ["dev@example.test"], exe.replace(b"<x1@t>", b"<x2@t>"))
        try:
            s.sendmail("a@remote.invalid", ["dev@example.test", "user@example.test"],
                       exe.replace(b"<x1@t>", b"<x3@t>"))
            F.check(False, "exe to dev@ and user@ refused")
        except smtplib.SMTPDataError as e:
            F.check(e.smtp_code == 550, "exe to dev@ and user@: 550, user@ does not exempt (%s)" % e)
    with smtplib.SMTP("127.0.0.1", p, local_hostname="client.example", timeout=30) as s:
        # a zip of documents only passes
        s.sendmail("a@remote.invalid", ["user@example.test"], zip_mail(
            "report.zip", [("report.pdf", b"%PDF-1.4 not really\n")], b"z2"))
        s.sendmail("a@remote.invalid", ["user@example.test"],
                   msg(b"card", b"my card is 4111 1111 1111 1111 thanks", b"k1"))
    lst = json.loads(gw.ctl("queue", "list", "--json"))
    items = lst if isinstance(lst, list) else lst.get("messages", [])
    q = [m for m in items if m.get("state") == "quarantine"]
    F.check(len(q) == 1 and q[0].get("reason", "").startswith("DLP rule"),
            "card number (dlp_action quarantine): quarantined (%s)" % items)
    got = gw.wait_maildir(4, timeout=30)
    time.sleep(0.5)
    got = gw.maildir_messages()
    ids = sorted(mxtest.message_ids(got))
    F.check(ids == ["<h2@t>", "<t1@t>", "<x2@t>", "<z2@t>"],
            "only ham, the tagged spam, the clean zip and dev@'s exempted exe delivered (%s)" % ids)
    F.check("attachment rule hit, exempted by attachment_allow for every recipient: "
            "invoice.exe (rule T_EXE)" in gw.log(), "the exemption is logged")
    F.check("banned attachment: invoice.zip/setup.exe (rule T_EXE)" in gw.log(),
            "the log line names the member and the rule")
    tagged = [email.message_from_bytes(r) for r in got if b"<t1@t>" in r]
    F.check(tagged and tagged[0]["Subject"] == "[SPAM] hello there",
            "tag: subject prefixed (%r)" % (tagged[0]["Subject"] if tagged else None))
    F.check("discard: end of data" in gw.log(), "the discard is logged")
    F.check(gw.stop() == 0, "clean stop")
finally:
    if F.items:
        print("---- mxgate B log (tail) ----\n" + gw.log()[-4000:])
    gw.cleanup()

# ---- gateway D: outbound limits per sender (loopback is trusted here) ----
dd = tempfile.mkdtemp(prefix="mxgate-policy-")
gw = mxtest.Gateway(mxgate, workers=1, keep_dir=dd,
                    extra="limits { sender_msgs_per_hour = 2; sender_rcpts_per_hour = 3; }\n")
try:
    gw.start(timeout=60)
    with smtplib.SMTP("127.0.0.1", gw.port, local_hostname="client.example", timeout=30) as s:
        s.ehlo()
        codes = []
        for i in range(3):
            code, _ = s.mail("a@corp.example")
            codes.append(code)
            if code == 250:
                s.rset()
        F.check(codes == [250, 250, 451], "outbound: third message of one sender in the hour is 451 (%s)"
                % codes)
        code, _ = s.mail("b@corp.example")
        rc = [s.rcpt("r%d@elsewhere.example" % i)[0] for i in range(4)]
        F.check(code == 250 and rc == [250, 250, 250, 451],
                "outbound: fourth recipient of one sender in the hour is 451 (%s)" % rc)
        s.rset()
    F.check(gw.stop() == 0, "clean stop")
finally:
    if F.items:
        print("---- mxgate D log (tail) ----\n" + gw.log()[-4000:])
    gw.cleanup()

# ---- gateway C: anti-virus at SMTP time ----------------------------------
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def attachment_mail(payload, mid):
    return (b"From: a@remote.invalid\r\nTo: user@example.test\r\nSubject: doc\r\n"
            b"Message-ID: <" + mid + b"@t>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n"
            b"Content-Type: text/plain\r\n\r\nsee attached\r\n--zz\r\n"
            b"Content-Type: application/octet-stream; name=\"doc.bin\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(payload) +
            b"\r\n--zz--\r\n")


dc = tempfile.mkdtemp(prefix="mxgate-policy-")
avdb = os.path.join(dc, "avdb")
os.mkdir(avdb)
with open(os.path.join(avdb, "test.ndb"), "w") as f:
    f.write("Eicar-Test-Signature:0:*:" + EICAR.hex() + "\n")
gw = mxtest.Gateway(mxgate, trusted=["192.0.2.0/24"], keep_dir=dc,
                    extra='scan { clamav { enabled = true; database = "%s"; } }\n' % avdb)
try:
    gw.start(timeout=60)
    p = gw.port
    with smtplib.SMTP("127.0.0.1", p, local_hostname="client.example", timeout=60) as s:
        try:
            s.sendmail("a@remote.invalid", ["user@example.test"], attachment_mail(EICAR, b"v1"))
            F.check(False, "infected message refused")
        except smtplib.SMTPDataError as e:
            F.check(e.smtp_code == 554 and b"virus found" in e.smtp_error
                    and b"Eicar-Test-Signature" in e.smtp_error,
                    "infected attachment: 554 5.7.1 naming the virus (%s)" % e)
        # a forged status from outside is removed: only the gateway's own is delivered
        s.sendmail("a@remote.invalid", ["user@example.test"],
                   b"X-Virus-Status: Clean (forged)\r\n" + attachment_mail(b"harmless", b"c1"))
    got = gw.wait_maildir(1, timeout=30)
    time.sleep(0.5)
    got = gw.maildir_messages()
    F.check(sorted(mxtest.message_ids(got)) == ["<c1@t>"], "only the clean message delivered")
    cm = [email.message_from_bytes(r) for r in got]
    F.check(cm and cm[0].get_all("X-Virus-Status") == ["Clean"],
            "clean message carries X-Virus-Status: Clean (%r)" % (cm[0]["X-Virus-Status"] if cm else None))
    st = json.loads(gw.ctl("stats", "--json"))
    flat = {}

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(k, x)
        else:
            flat[prefix] = v
    walk("", st)
    F.check(flat.get("verdict_virus") == 1 and flat.get("av_queue") == 0,
            "stats: one virus verdict, AV queue back to 0 (%s, %s)"
            % (flat.get("verdict_virus"), flat.get("av_queue")))
    with open(gw.conf) as f:
        text = f.read()
    with open(gw.conf, "w") as f:
        f.write(text.replace("enabled = true;", 'enabled = true; on_infected = "quarantine";'))
    F.check(gw.ctl("reload").startswith("reloaded"), "reload with on_infected = quarantine")
    with smtplib.SMTP("127.0.0.1", p, local_hostname="client.example", timeout=60) as s:
        s.sendmail("a@remote.invalid", ["user@example.test"], attachment_mail(EICAR, b"v2"))
    lst = json.loads(gw.ctl("queue", "list", "--json"))
    items = lst if isinstance(lst, list) else lst.get("messages", [])
    q = [m for m in items if m.get("state") == "quarantine"]
    F.check(len(q) == 1 and "Eicar-Test-Signature" in q[0].get("reason", ""),
            "infected message quarantined with the virus name (%s)" % items)

    # per-scope av and quarantine_retention (reload): other.test has AV off and
    # keeps quarantined mail 1 day, example.test 3 days, ceo@example.test 9 days
    with open(gw.conf) as f:
        text = f.read()
    text = text.replace('relay_domains = [ "example.test" ];',
                        'relay_domains = [ "example.test", "other.test" ];')
    text += ('policy { domains { "other.test" { av = false; quarantine_retention = 1d; }\n'
             '  "example.test" { quarantine_retention = 3d; } }\n'
             '  users { "ceo@example.test" { quarantine_retention = 9d; } } }\n')
    with open(gw.conf, "w") as f:
        f.write(text)
    F.check(gw.ctl("reload").startswith("reloaded"), "reload with per-scope av / retention")
    with smtplib.SMTP("127.0.0.1", p, local_hostname="client.example", timeout=60) as s:
        # every recipient has AV off: not scanned, delivered as is
        s.sendmail("a@remote.invalid", ["user@other.test"], attachment_mail(EICAR, b"v3"))
        # mixed recipients: scanned (the safe side), so quarantined as infected
        s.sendmail("a@remote.invalid", ["user@other.test", "ceo@example.test"],
                   attachment_mail(EICAR, b"v4"))
        s.sendmail("a@remote.invalid", ["user@example.test"], attachment_mail(EICAR, b"v5"))
    got = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "<v3@t>" not in got:
        got = {(m["Message-ID"] or "").strip(): m for m in
               (email.message_from_bytes(r) for r in gw.maildir_messages())}
        time.sleep(0.1)
    F.check("<v3@t>" in got and got["<v3@t>"]["X-Virus-Status"] is None,
            "AV off for every recipient: delivered unscanned, no X-Virus-Status")
    F.check("<v4@t>" not in got and "<v5@t>" not in got, "AV on for some: not delivered")
    F.check("policy: AV off for every recipient (1), message not virus-scanned" in gw.log() and
            "policy: AV off for 1 of 2 recipients, scanned for the others" in gw.log(),
            "AV skip and mixed recipients logged")
    lst = json.loads(gw.ctl("queue", "list", "--json"))
    items = lst if isinstance(lst, list) else lst.get("messages", [])
    ret = {}
    for m in items:
        if m.get("state") == "quarantine" and m.get("id"):
            show = gw.ctl("queue", "show", m["id"])
            r = [ln.split(":", 1)[1].strip() for ln in show.splitlines()
                 if ln.startswith("retention:")]
            ret[tuple(sorted(m.get("rcpts", [])))] = r[0] if r else None
    F.check(ret.get(("ceo@example.test", "user@other.test")) == "777600",
            "mixed recipients: kept as long as the longest retention (9d): %r" % ret)
    F.check(ret.get(("user@example.test",)) == "259200",
            "domain retention 3d applies: %r" % ret)
    F.check(gw.stop() == 0, "clean stop")
finally:
    if F.items:
        print("---- mxgate C log (tail) ----\n" + gw.log()[-4000:])
    gw.cleanup()
F.finish()
