#!/usr/bin/env bash
# Fuzzing: builds the cargo-fuzz targets of fuzz/harness once (the checks are in
# fuzz/src/targets), runs each for SECONDS_PER_TARGET seconds, JOBS targets at a time, all under
# `nice -n 19` (CPU work, not a measurement: it takes no bench.lock); then minimizes each corpus
# (libFuzzer's merge, what `cargo fuzz cmin` does) and prints a table per target: executions,
# time, coverage (libFuzzer's cov: and ft: of its last status line), the corpus after
# minimizing, and crashes. Each run's whole output is kept in $LOGS. The corpora are
# fuzz/corpus/<target>/ (committed; every file is replayed on stable by `cargo test -p
# multinode-fuzz`); a crash is saved under fuzz/harness/artifacts/<target>/ and makes the
# script exit 1. See fuzz/README.md.
#
# Usage: bench/fuzz.sh [TARGET...]     (default: every target)
# Tunables (environment): SECONDS_PER_TARGET=600 JOBS=2 CMIN=1 (0: keep the corpora as they
#   grew) LOGS=target/fuzz-logs
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); installs neither.
set -euo pipefail

SECONDS_PER_TARGET=${SECONDS_PER_TARGET:-600}
JOBS=${JOBS:-2}
CMIN=${CMIN:-1}

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
LOGS=${LOGS:-$repo/target/fuzz-logs}
mkdir -p "$LOGS"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs cargo-fuzz on the nightly toolchain: rustup toolchain install nightly;" \
    "cargo install cargo-fuzz" >&2
  exit 2
fi
fuzz=(nice -n 19 cargo +nightly fuzz)
dir=(--fuzz-dir fuzz/harness)
# Optimized, with debug assertions and overflow checks (an overflow in a parser is a bug even
# where a release build would wrap), without AddressSanitizer: the fuzzed code is safe Rust,
# and ASan would halve the executions.
build=(-O --debug-assertions --sanitizer none)

all=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/harness/Cargo.toml | grep -v '^multinode-fuzz-harness$')
targets=${*:-$all}
for t in $targets; do
  grep -qx "$t" <<<"$all" || { echo "fuzz.sh: no target $t (targets: $(echo $all))" >&2; exit 2; }
done

# Seeds: valid examples of every format (fuzz/seeds.py), added to the corpora before a run.
nice -n 19 cargo run -q --locked -p multinode-fuzz --example serve_options >"$LOGS/serve_options"
python3 fuzz/seeds.py "$LOGS/serve_options"

echo "building the fuzz targets (nightly, optimized, debug assertions, coverage)..." >&2
"${fuzz[@]}" build "${dir[@]}" "${build[@]}" >"$LOGS/build.log" 2>&1 || { cat "$LOGS/build.log" >&2; exit 1; }
# The runs use these binaries as built now (not `cargo fuzz run`, which would build again for
# each target, and pick up sources edited while the fuzzers run).
bin=$repo/fuzz/harness/target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

run_one() {
  local t=$1 log=$LOGS/$1.log
  mkdir -p "fuzz/corpus/$t" "fuzz/harness/artifacts/$t"
  local start=$(date +%s)
  # -timeout: one input taking 10 s is a hang; -rss_limit_mb bounds what an input may allocate.
  if nice -n 19 "$bin/$t" -artifact_prefix="fuzz/harness/artifacts/$t/" \
    -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1 -timeout=10 \
    -rss_limit_mb=1024 "fuzz/corpus/$t" >"$log" 2>&1; then
    echo "$t ok $(($(date +%s) - start))" >"$LOGS/$t.result"
  else
    echo "$t CRASH $(($(date +%s) - start))" >"$LOGS/$t.result"
  fi
}
export -f run_one
export LOGS SECONDS_PER_TARGET bin

echo "fuzzing $(echo $targets | wc -w) target(s), ${SECONDS_PER_TARGET}s each, $JOBS at a time..." >&2
for t in $targets; do echo "$t"; done |
  xargs -P "$JOBS" -I{} bash -c "run_one {}"

# Minimizing: libFuzzer's merge of the grown corpus into an empty one keeps the smallest set
# of inputs that reaches the same coverage (what `cargo fuzz cmin` does).
if [ "$CMIN" = 1 ]; then
  for t in $targets; do
    grep -q ' ok ' "$LOGS/$t.result" || continue
    old=$LOGS/$t.grown
    rm -rf "$old" && mv "fuzz/corpus/$t" "$old" && mkdir "fuzz/corpus/$t"
    nice -n 19 "$bin/$t" -merge=1 -timeout=10 -rss_limit_mb=1024 "fuzz/corpus/$t" "$old" \
      >"$LOGS/$t.cmin.log" 2>&1 ||
      { echo "fuzz.sh: cmin of $t failed, see $LOGS/$t.cmin.log (the grown corpus is $old)" >&2; exit 1; }
    # The regression inputs (crash-*: what a fixed crash was found with; check-*: what showed
    # a check wrong) stay, whatever coverage they add.
    find "$old" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'check-*' \) \
      -exec cp {} "fuzz/corpus/$t/" \;
  done
fi

# The table: libFuzzer's final stats (stat::number_of_executed_units), its last status line's
# cov: and ft:, the corpus now.
crashed=0
printf '| target | executions | seconds | exec/s | cov | ft | corpus files | corpus KiB | result |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---|\n'
for t in $targets; do
  log=$LOGS/$t.log
  read -r _ result secs <"$LOGS/$t.result"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  status=$(grep -E '^#[0-9]+.*cov: ' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
  files=$(find "fuzz/corpus/$t" -type f | wc -l)
  kib=$(du -sk --apparent-size "fuzz/corpus/$t" | cut -f1)
  [ "$result" = ok ] || crashed=1
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" "${execs:-?}" "$secs" \
    "$(( ${execs:-0} / (secs > 0 ? secs : 1) ))" "${cov:-?}" "${ft:-?}" "$files" "$kib" "$result"
done
if [ "$crashed" = 1 ]; then
  echo "fuzz.sh: a target failed: see its log in $LOGS and fuzz/harness/artifacts/" >&2
  exit 1
fi
