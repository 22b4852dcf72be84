#!/usr/bin/python3
"""Parse console's Prometheus output with prometheus_client's own parser
(Debian's python3-prometheus-client) and check the values of a known load."""
import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

out = subprocess.run([sys.argv[1], "prom"], capture_output=True, text=True, check=True).stdout
fams = {f.name: f for f in text_string_to_metric_families(out)}
def sample(name, **labels):
    for f in fams.values():
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError("no sample %s %s" % (name, labels))

errors = []
def check(c, what):
    if not c:
        errors.append(what)
check(fams["mxgate_smtp_replies"].type == "counter", "replies type")
check(fams["mxgate_connections_open"].type == "gauge", "gauge type")
check(fams["mxgate_spool_fsync_seconds"].type == "histogram", "histogram type")
check(sample("mxgate_messages_total", result="accepted") == 1000, "accepted = 100+200+300+400")
check(sample("mxgate_smtp_replies_total", **{"class": "4xx"}) == 4, "4xx")
check(sample("mxgate_connections_open") == 1, "open")
check(sample("mxgate_worker_busy_seconds_total", worker="3") == 1.0, "busy of worker 3")
check(sample("mxgate_spool_fsync_seconds_count") == 200, "fsync count")
check(sample("mxgate_spool_fsync_seconds_bucket", le="+Inf") == 200, "+Inf bucket")
check(sample("mxgate_spool_fsync_seconds_bucket", le="0.000512") == 4, "le 512us: one per worker")
check(abs(sample("mxgate_spool_fsync_seconds_sum") - 4 * sum(500 + i * 20 for i in range(50)) / 1e6) < 1e-9, "sum")
check(fams["mxgate_rule_hits"].type == "counter", "rule hits type")
check(sample("mxgate_rule_hits_total", rule="BAYES_99") == 40, "BAYES_99: 10 per worker")
check(sample("mxgate_rule_hits_total", rule="HTML_MESSAGE") == 10, "HTML_MESSAGE: 1+2+3+4")
check(sample("mxgate_rule_hits_untracked_total") == 0, "untracked")
check(len(fams) >= 20, "families: %d" % len(fams))
for f in fams.values():
    check(f.documentation != "", "HELP of " + f.name)
if errors:
    print("\n".join(errors))
    sys.exit(1)
print("ok: %d metric families" % len(fams))
