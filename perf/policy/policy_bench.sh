#!/bin/bash
# Sender-list lookups of this tree beside an earlier revision, in one run.
#   perf/policy/policy_bench.sh BASE_REV [ENTRIES...]
# Builds perf/policy/policy_bench.c twice with cc -O2 (config/ of this tree, and
# config/policy.c taken from BASE_REV), then runs the two alternately, three
# times per list size, on the same seeded lists and lookups.
set -euo pipefail
cd "$(dirname "$0")/../.."
base=${1:?usage: policy_bench.sh BASE_REV [ENTRIES...]}
shift
sizes=${*:-100 10000 200000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/config"
git show "$base:config/policy.c" >"$tmp/config/policy.c"
cflags="-O2 -I. -Wall"
cc $cflags -o "$tmp/now" perf/policy/policy_bench.c config/config.c config/policy.c config/ucl.c -lm
cc $cflags -o "$tmp/base" perf/policy/policy_bench.c config/config.c "$tmp/config/policy.c" config/ucl.c -lm
for n in $sizes; do
    lookups=$((n >= 100000 ? 500 : 20000))
    for run in 1 2 3; do
        echo "base($base) $("$tmp/base" "$n" "$lookups" 7)"
        echo "now          $("$tmp/now" "$n" "$lookups" 7)"
    done
done
