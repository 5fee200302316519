#!/usr/bin/env bash
# Fuzz every target (or those in $TARGETS) for $1 seconds each (default 300), one after
# the other: libFuzzer through cargo fuzz, on the stable toolchain (RUSTC_BOOTSTRAP=1
# lets it take the nightly-only instrumentation flags), without a sanitizer (safe Rust;
# the targets cap their own address space at $ATTN_FUZZ_AS_MIB, 2048 by default).
# New inputs go to fuzz/target/corpus/<target>, crashes to fuzz/artifacts/<target>, the
# log to fuzz/target/fuzz-<target>.log. Needs `cargo install cargo-fuzz` and a C++
# compiler (g++ is enough) for libFuzzer.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-300}
export RUSTC_BOOTSTRAP=1
flags=(-s none --codegen-units 16)
cargo fuzz build "${flags[@]}"
for t in ${TARGETS:-model_folder tokenizer_json labelled request_json}; do
    mkdir -p "target/corpus/$t"
    dirs=("target/corpus/$t" "corpus/$t")
    if [ -d "regressions/$t" ]; then dirs+=("regressions/$t"); fi
    cargo fuzz run "${flags[@]}" "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -max_len=16384 \
        -dict="dict/$t.dict" -print_final_stats=1 2>&1 | tee "target/fuzz-$t.log"
done
