#!/usr/bin/env bash
# Two builds of the server compared under one load: BASE and NEW are the two replicas of the
# same run (bench/two-replicas.sh: one redis-server, 100 groups of 10, one publisher each at
# RATE messages/s, members and publishers split evenly), so a slower minute of the shared
# machine hits both alike. Prints each replica's CPU % and NEW / BASE per run; the sides swap
# every run. Run to run, `bench/run.sh`'s fixed rates move by up to 10 % on this machine type;
# a build against itself here gives medians of 0.993-1.000 (every run within 3 %), so a change
# of a few per cent shows.
#
#   bench/pair.sh BASE_BIN NEW_BIN [RUNS] [RATE ...]   # defaults: 4 runs at 10, 30 and 50 /s
#   e.g. cp target/release/channels-server /tmp/base; (change, build); bench/pair.sh /tmp/base target/release/channels-server
set -euo pipefail
cd "$(dirname "$0")/.."
(( $# >= 2 )) || { sed -n '2,11p' "$0" >&2; exit 2; }
base="$(realpath "$1")"; new="$(realpath "$2")"; runs="${3:-4}"; shift $(( $# >= 3 ? 3 : 2 ))
rates=("${@:-}"); [ -n "${rates[0]}" ] || rates=(10 30 50)
for f in "$base" "$new"; do [ -x "$f" ] || { echo "not an executable: $f" >&2; exit 2; }; done
for rate in "${rates[@]}"; do
  ratios=()
  for run in $(seq 1 "$runs"); do
    if (( run % 2 )); then first="$base"; second="$new"; else first="$new"; second="$base"; fi
    line=$(
      REPLICA_BINS="$first $second"
      # shellcheck source=bench/two-replicas.sh
      source bench/two-replicas.sh
      target/release/channels-loadgen fanout --url "ws://127.0.0.1:$a" --url "ws://127.0.0.1:$b" \
        --pid "${pids[1]}" --pid "${pids[2]}" --groups 100 --members 10 --publishers 1 \
        --rate "$rate" --duration 15 > "$dir/report.json"
      python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); s=r["servers"]; print(s[0]["cpu_percent"], s[1]["cpu_percent"], r["lost"], r["latency_ms"]["p99"])' "$dir/report.json"
    )
    read -r cpu_first cpu_second lost p99 <<< "$line"
    if (( run % 2 )); then cpu_base=$cpu_first; cpu_new=$cpu_second; else cpu_base=$cpu_second; cpu_new=$cpu_first; fi
    ratio=$(python3 -c "print(f'{$cpu_new / $cpu_base:.3f}')")
    ratios+=("$ratio")
    printf 'rate %s/s run %s: base %.2f %% new %.2f %% CPU, new/base %s (lost %s, p99 %s ms)\n' \
      "$rate" "$run" "$cpu_base" "$cpu_new" "$ratio" "$lost" "$p99"
  done
  python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[2:]]; print(f"rate {sys.argv[1]}/s: new/base median {statistics.median(v):.3f} (min {min(v):.3f}, max {max(v):.3f}, {len(v)} runs)")' "$rate" "${ratios[@]}"
done
