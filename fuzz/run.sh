#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS seconds (default 30), one
# at a time, in-process, starting from the checked-in seed corpus. Fails when any
# target finds a crash, a hang (-timeout) or a leak; the input lands in
# fuzz/artifacts/<target>/. Prints executions (and coverage) per target.
#
#   fuzz/run.sh 60            # every target, 60 s each
#   fuzz/run.sh 60 wire idl_check
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); builds on stable
# through RUSTC_BOOTSTRAP=1. FUZZ_SANITIZER=none builds without AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(idl_check message_parse ring_header ring_hostile handshake wire net_frame)
fi
sanitizer=${FUZZ_SANITIZER:-address}
unset CARGO_TARGET_DIR
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O -s "$sanitizer"

failed=()
summary=()
for t in "${targets[@]}"; do
    seeds="corpus/$t"
    # New inputs found during the run go to target/corpus/<target> (ignored by
    # git, kept between runs), so the checked-in seeds stay small.
    work="target/corpus/$t"
    mkdir -p "$work" "$seeds" "artifacts/$t"
    dirs=("$work" "$seeds")
    log=$(mktemp)
    echo "== $t: ${seconds}s"
    status=0
    cargo fuzz run -O -s "$sanitizer" "$t" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=8192 -print_final_stats=1 >"$log" 2>&1 || status=$?
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -1 | grep -o 'cov: [0-9]*' || echo "cov: ?")
    ft=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -o 'ft: [0-9]*' || echo "ft: ?")
    corpus=$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -o 'corp: [0-9/]*[a-zA-Z]*' || echo "corp: ?")
    line="$t: $execs executions in ${seconds}s, $cov, $ft, $corpus"
    if [ "$status" -ne 0 ]; then
        line="$line: FAILED (exit $status)"
        failed+=("$t")
        grep -E 'ERROR|panicked|SUMMARY|Test unit written|artifact_prefix' "$log" | head -20 || true
        cp "$log" "artifacts/$t/run.log"
    fi
    echo "$line"
    summary+=("$line")
    rm -f "$log"
done

echo
echo "== summary"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
