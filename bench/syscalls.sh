#!/usr/bin/env bash
# System calls and context switches per second of one replica under the fixed S-fanout load of
# bench/profile.sh (two release replicas on one redis-server, 100 groups of 10, one publisher
# each at RATE/s), counted by `perf stat` on tracepoints for 5 s in the middle of the run.
#
#   bench/syscalls.sh [RATE] [SECONDS]     # defaults: 40 messages/s per publisher, 10 s
#   PEERS_RUST_BIN=<binary> bench/syscalls.sh 100   # another build of the server
set -euo pipefail
cd "$(dirname "$0")/.."
rate="${1:-40}"; seconds="${2:-10}"
command -v perf >/dev/null || { echo "perf not found: install the Debian package linux-perf" >&2; exit 1; }
(( seconds >= 9 )) || { echo "SECONDS must be at least 9 (counting starts 3 s in, for 5 s)" >&2; exit 1; }
# shellcheck source=bench/two-replicas.sh
source bench/two-replicas.sh
(sleep 3; perf stat -x, -e 'syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_write,context-switches' -p "${pids[1]}" -- sleep 5 2> "$dir/stat.txt") &
st=$!
target/release/channels-loadgen fanout --url "ws://127.0.0.1:$a" --url "ws://127.0.0.1:$b" \
  --pid "${pids[1]}" --pid "${pids[2]}" --groups 100 --members 10 --publishers 1 \
  --rate "$rate" --duration "$seconds" > "$dir/report.json"
wait $st
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("load:", round(r["delivered_per_sec"]), "lost", r["lost"], "p99", r["latency_ms"]["p99"], "CPU %", [round(s["cpu_percent"],1) for s in r["servers"]])' "$dir/report.json"
awk -F, '{printf "%s %.0f/s\n", $3, $1/5}' "$dir/stat.txt"
