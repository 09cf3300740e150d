#!/usr/bin/env bash
# Runs each fuzz target (the .bi5 decoder, the MT5 line parser, the OANDA parser) for a bounded
# time: `scripts/fuzz.sh [seconds per target, default 60]`. Exits non-zero on the first crash.
# cargo-fuzz wants a nightly compiler; this machine has stable only, so the script builds with
# RUSTC_BOOTSTRAP=1 and without a sanitizer (libFuzzer's coverage guidance still works).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# Seed the .bi5 corpus with the real fixture files when they are beside the checkout.
mkdir -p corpus/bi5_decoder corpus/mt5_line corpus/oanda_line
fixtures=../../shared/fixtures/dukascopy
if [ -d "$fixtures" ]; then
  find "$fixtures" -name '*.bi5' -size -30k | head -n 5 | xargs -r -I{} cp {} corpus/bi5_decoder/
fi
for target in bi5_decoder mt5_line oanda_line; do
  echo "==> fuzzing $target for ${secs}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none "$target" "corpus/$target" -- \
    -max_total_time="$secs" -max_len=65536 -print_final_stats=1
done
echo "==> no crash in ${secs}s per target"
