#!/bin/sh
# Render mx_console_top() (via stats_demo top) in a detached tmux at 80x24,
# capture the pane and check: 24 lines, none wider than 80, only printable
# ASCII, the expected sections present; then q must end the program.
set -u
DEMO=$1
command -v tmux >/dev/null || { echo "tmux missing: skipped"; exit 77; }
SOCK=$(mktemp -u /tmp/mxtop-tmux.XXXXXX)
CAP=$(mktemp /tmp/mxtop-cap.XXXXXX)
cleanup() { tmux -S "$SOCK" kill-server 2>/dev/null; rm -f "$SOCK" "$CAP"; }
trap cleanup EXIT
tmux -S "$SOCK" -f /dev/null new-session -d -x 80 -y 24 "TERM=screen $DEMO top; sleep 30" || exit 1
sleep 2.5
tmux -S "$SOCK" capture-pane -p > "$CAP"
fail=0
lines=$(wc -l < "$CAP")
[ "$lines" -eq 24 ] || { echo "expected 24 lines, got $lines"; fail=1; }
awk 'length($0) > 80 { print "line " NR " too wide: " length($0); bad=1 } END { exit bad }' "$CAP" || fail=1
if LC_ALL=C grep -n '[^ -~]' "$CAP"; then echo "non-printable bytes on screen"; fail=1; fi
for want in "mxgate top - 4 worker(s)" "Verdicts     clean 90.0%" "Top rules    BAYES_99 " \
            "spool fsync" "smtp txn" "Core  load" "q quits"; do
    grep -qF "$want" "$CAP" || { echo "missing: $want"; fail=1; }
done
# the demo adds 1000 accepted messages per fetch, one fetch a second: the
# rate is 1000 over the measured interval, printed as an integer when it is
# one ("1000" when the interval is exactly 1 s) and with a decimal otherwise
grep -qE '^Messages/s   accepted (9[5-9][0-9]|10[0-4][0-9])(\.[0-9])?  rejected 0' "$CAP" || { echo "accepted rate wrong"; fail=1; }
# after one second the rate line shows the per-second load of the demo
grep -qE '^   3  \[#####' "$CAP" || { echo "per-core bar of core 3 missing"; fail=1; }
tmux -S "$SOCK" send-keys q
sleep 0.5
tmux -S "$SOCK" capture-pane -p | grep -q "q quits" && { echo "q did not quit"; fail=1; }
[ $fail -eq 0 ] || { echo "---- screen ----"; cat "$CAP"; }
exit $fail
