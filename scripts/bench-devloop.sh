#!/usr/bin/env bash
# The module developer's loop, timed: two fresh crates from `refold new`, each
# built with `refold build` against an empty build cache (see "Build cache" in
# README.md): the first compiles the SDK and its dependencies for Wasm, the
# second should reuse them. Appends one JSON object per result to
# bench-results/devloop.jsonl, in the format of the cargo benches.
#
#   scripts/bench-devloop.sh [--baseline]
#
# --baseline also builds a third fresh crate in its own target directory
# (`--target-dir`, no cache): what every module cost before the cache.
# REFOLD names the binary (default: target/release/refold, built if missing).
# The machine's load average goes into each record: on a shared machine other
# builds slow these down.
set -euo pipefail

cd "$(dirname "$0")/.."
workspace=$PWD
refold=${REFOLD:-$workspace/target/release/refold}
if [[ -z ${REFOLD:-} ]]; then
    cargo build --release -p refold --bin refold
fi
baseline=false
[[ ${1:-} == --baseline ]] && baseline=true

scratch=$(mktemp -d "${TMPDIR:-/tmp}/refold-devloop.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export XDG_CACHE_HOME=$scratch/cache
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR CARGO_BUILD_BUILD_DIR

now_ns() { date +%s%N; }
seconds() { awk -v ns="$1" 'BEGIN { printf "%.2f", ns / 1e9 }'; }

# build NAME [ARGS...]: `refold build` of crate NAME; prints the seconds it took.
build() {
    local name=$1
    shift
    local start end
    start=$(now_ns)
    "$refold" build "$scratch/$name" "$@" >"$scratch/$name.out" 2>"$scratch/$name.err" || {
        cat "$scratch/$name.err" >&2
        exit 1
    }
    end=$(now_ns)
    seconds $((end - start))
}

"$refold" new devloop-first --kind aggregate --dir "$scratch" >/dev/null
"$refold" new devloop-second --kind projection --dir "$scratch" >/dev/null

load_before=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo null)
first=$(build devloop-first)
second=$(build devloop-second)
again=$(build devloop-second)
load_after=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo null)
if grep -q "Compiling refold-sdk" "$scratch/devloop-second.err"; then
    echo "the second build compiled the SDK again: the cache did not serve it" >&2
    exit 1
fi
without_cache=null
if $baseline; then
    "$refold" new devloop-third --kind aggregate --dir "$scratch" >/dev/null
    without_cache=$(build devloop-third --target-dir "$scratch/devloop-third/target")
fi

git_rev=$(git rev-parse --short HEAD 2>/dev/null || true)
timestamp=$(($(now_ns) / 1000000))
mkdir -p bench-results
out=bench-results/devloop.jsonl
record() { # name median baseline ratio goal
    printf '{"bench":"devloop","name":"%s","unit":"seconds","median":%s,"runs":[%s],"baseline_median":%s,"ratio":%s,"goal":"%s","timestamp_unix_ms":%s,"git_rev":"%s","mode":"full","load_avg_1m_before":%s,"load_avg_1m_after":%s,"cpus":%s}\n' \
        "$1" "$2" "$2" "$3" "$4" "$5" "$timestamp" "$git_rev" "$load_before" "$load_after" "$(nproc)" >>"$out"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
record "refold build, first module (empty cache: SDK, wit-bindgen, serde for Wasm)" "$first" null null "informational"
record "refold build, second module (shared cache)" "$second" "$first" "$(ratio "$second" "$first")" "<= 15 s"
record "refold build, second module again (nothing changed)" "$again" "$first" "$(ratio "$again" "$first")" "informational"
if $baseline; then
    record "refold build, a module in its own target dir (no cache)" "$without_cache" "$first" "$(ratio "$without_cache" "$first")" "informational"
fi

echo "first module (empty cache):   ${first} s"
echo "second module (shared cache): ${second} s"
echo "second module, again:         ${again} s"
$baseline && echo "a module without the cache:   ${without_cache} s"
echo "load average (1 min) before/after: $load_before / $load_after on $(nproc) CPUs"
echo "results appended to $out"
