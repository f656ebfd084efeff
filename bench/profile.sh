#!/usr/bin/env bash
# Where the time goes: two release replicas on one redis-server under a fixed S-fanout load
# (100 groups of 10, one publisher each at RATE/s), with `perf record` (software cpu-clock
# sampling, call graphs) on the first replica. Prints the top symbols, self time.
#
#   bench/profile.sh [RATE] [SECONDS]      # defaults: 40 messages/s per publisher, 10 s
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-40}"
seconds="${2:-10}"
command -v perf >/dev/null || { echo "perf not found: install the Debian package linux-perf" >&2; exit 1; }
# shellcheck source=bench/two-replicas.sh
source bench/two-replicas.sh
perf record -q -F ${PERF_FREQ:-999} -e cpu-clock ${PERF_CALLGRAPH:--g} -p "${pids[1]}" -o "${PERF_DATA:-$dir/perf.data}" -- sleep "$((seconds + 4))" 2>/dev/null &
perf_pid=$!
target/release/channels-loadgen fanout --url "ws://127.0.0.1:$a" --url "ws://127.0.0.1:$b" \
  --pid "${pids[1]}" --pid "${pids[2]}" --groups 100 --members 10 --publishers 1 \
  --rate "$rate" --duration "$seconds" > "$dir/report.json"
wait "$perf_pid" || true
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("load:", round(r["delivered_per_sec"]), "deliveries/s, lost", r["lost"], "p99", r["latency_ms"]["p99"], "ms, servers CPU %", [round(s["cpu_percent"]) for s in r["servers"]], "loadgen CPU %", round(r["loadgen_cpu_percent"]))' "$dir/report.json"
perf report -i "${PERF_DATA:-$dir/perf.data}" --no-children --sort dso,symbol --stdio 2>/dev/null \
  | grep -E '^ +[0-9]' | head -40
