#!/bin/sh
# Runs one fuzz target for a while on the committed corpus; CI calls it for each target.
#   tests/fuzz/run.sh TARGET SECONDS
# Exits non-zero when the target crashes, times out (a slow input counts as a failure) or cannot
# be built; the input that failed is left in tests/fuzz/artifacts/TARGET/. New corpus entries
# found on the way go to a scratch directory, so the committed corpus stays as it is.
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: $0 TARGET SECONDS" >&2
    exit 2
fi
target=$1
seconds=$2
here=$(cd "$(dirname "$0")" && pwd)

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "$0: the nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "$0: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 1
fi
if [ ! -d "$here/corpus/$target" ]; then
    echo "$0: no corpus for target $target in $here/corpus" >&2
    exit 2
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT INT TERM

dict=""
if [ -f "$here/$target.dict" ]; then
    dict="-dict=$here/$target.dict"
fi

# cargo-fuzz looks for fuzz/ under the project root unless told where the crate is.
cd "$here/../.."
# K3NODE_FUZZ_DEV=1 builds the targets unoptimised (still with ASan, and with overflow checks):
# less build time, for short runs where the build dominates (CI's).
profile=""
if [ "${K3NODE_FUZZ_DEV:-}" = 1 ]; then
    profile="--dev"
fi
# -timeout: one input taking seconds means super-linear time (inputs are at most 64 KiB).
# shellcheck disable=SC2086 # $profile and $dict are empty or one word
cargo +nightly fuzz run $profile --fuzz-dir tests/fuzz "$target" "$scratch" "tests/fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1 $dict
