#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ (Redis payloads, Fernet tokens, URL routing, names) for a
# fixed time each, on the stable toolchain: `cargo fuzz run -s none` (no sanitizer; the others
# need nightly). Installs the pinned cargo-fuzz first if it is missing.
#
# Each target starts from its committed seeds (fuzz/seeds/TARGET, read only) and the inputs that
# earlier runs on this machine found (fuzz/corpus/TARGET, git-ignored), with libFuzzer's limits
# of reliability-security.md T-F1: 256 MB of memory, 10 s per input. Any crash, panic, timeout or
# out-of-memory fails the run: the script names the input libFuzzer saved under
# fuzz/artifacts/TARGET/, dumps it, and says how to reproduce it. All targets run even after a
# failure; the exit status is non-zero if any failed.
#
# Usage: scripts/fuzz.sh --short              every target 15 s (scripts/test.sh and CI)
#        scripts/fuzz.sh SECONDS [TARGET...]  every target (or the ones named) SECONDS each
# Long runs and what each target checks: fuzz/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."

cargo_fuzz_version=0.13.2
targets=(redis_payload resp_reply fernet_payload fernet_roundtrip routing names token hook_answer recovery_query api_message)

usage() {
  sed -n '/^# Usage:/,/^# Long runs/p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
case $1 in
  --short) seconds=15 ;;
  *[!0-9]* | '' | 0) usage ;;
  *) seconds=$1 ;;
esac
shift
if [[ $# -gt 0 ]]; then
  for target in "$@"; do
    [[ " ${targets[*]} " == *" $target "* ]] || {
      echo "fuzz: unknown target $target (targets: ${targets[*]})" >&2
      exit 2
    }
  done
  targets=("$@")
fi

if [[ $(cargo fuzz --version 2>/dev/null) != "cargo-fuzz $cargo_fuzz_version" ]]; then
  echo "fuzz: installing cargo-fuzz $cargo_fuzz_version"
  cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

# Build every target once, so that the time limits below are spent fuzzing.
build_start=$SECONDS
cargo fuzz build -s none
echo "fuzz: built the targets in $((SECONDS - build_start)) s"

failed=()
for target in "${targets[@]}"; do
  corpus=fuzz/corpus/$target
  artifacts=fuzz/artifacts/$target
  log=fuzz/artifacts/$target.log
  mkdir -p "$corpus" "$artifacts"
  before=$(ls "$artifacts")
  status=0
  cargo fuzz run -s none "$target" "$corpus" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=256 -timeout=10 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  found=$(comm -13 <(echo "$before") <(ls "$artifacts"))
  if [[ $status -eq 0 && -z $found ]]; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz: $target: ${runs:-?} runs in $seconds s, no crash ($(find "$corpus" -type f | wc -l) corpus inputs)"
    continue
  fi
  failed+=("$target")
  echo "fuzz: $target FAILED (exit $status); from $log:" >&2
  # The panic (or libFuzzer's error) with its context, without the progress lines.
  grep -v -e '^#[0-9]' -e '^stat::' "$log" |
    grep -E -A8 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|^error' | head -n 40 >&2 ||
    tail -n 40 "$log" >&2
  for file in $found; do
    echo "fuzz: $target: input saved as $artifacts/$file ($(wc -c <"$artifacts/$file") bytes):" >&2
    od -A x -t x1z -v "$artifacts/$file" | head -n 32 >&2
    echo "fuzz: reproduce with: cargo fuzz run -s none $target $artifacts/$file" >&2
  done
done

if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, $seconds s each: no crash"
