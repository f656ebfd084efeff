# Sourced by bench/profile.sh and bench/syscalls.sh (not run): builds the release server and
# load generator, starts one redis-server and two Rust replicas on free loopback ports, and
# stops them on exit. Sets: dir (a temporary directory), redis_port, a and b (the replicas'
# ports), pids (redis-server, replica a, replica b). REPLICA_BINS="A B" runs a given binary as
# each replica (bench/pair.sh); otherwise both are PEERS_RUST_BIN or the release build.
cargo build --release --locked -q -p channels-server -p system-tests --bin channels-server --bin channels-loadgen
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
dir="$(mktemp -d)"
redis_port="$(free_port)"; a="$(free_port)"; b="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --loglevel warning >/dev/null &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
sleep 0.3
# bench/peers.sh execs the server with the benchmark's settings (no per-address limits).
read -r -a replica_bins <<< "${REPLICA_BINS:-}"
for i in 0 1; do
  port=$([ "$i" = 0 ] && echo "$a" || echo "$b")
  PEERS_RUST_BIN="${replica_bins[$i]:-${PEERS_RUST_BIN:-}}" \
    bench/peers.sh rust "$port" "redis://127.0.0.1:$redis_port/0" 2>/dev/null &
  pids+=($!)
done
bench/peers.sh wait rust "$a" 20 && bench/peers.sh wait rust "$b" 20
