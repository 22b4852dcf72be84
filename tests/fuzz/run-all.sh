#!/bin/bash
# Run every libFuzzer target in BUILD for SECONDS each, seeded from its
# corpus folder; crashers are written into the corpus (regression tests).
set -u
build=$1; secs=${2:-60}
here=$(cd "$(dirname "$0")" && pwd)
rc=0
for bin in $(find "$build/tests" -type f -name 'fuzz_*' -perm -u+x | sort); do
    name=$(basename "$bin"); name=${name#fuzz_}
    mkdir -p "$here/corpus/$name" "$build/fuzz-work/$name"
    echo "== fuzz $name for ${secs}s"
    "$bin" -max_total_time="$secs" -artifact_prefix="$here/corpus/$name/crash-" \
        "$build/fuzz-work/$name" "$here/corpus/$name" || rc=1
done
exit $rc
