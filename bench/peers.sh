#!/usr/bin/env bash
# Launchers for the systems the benchmark compares (issue 5). Each server subcommand starts ONE
# server process in the foreground (exec: the caller's pid is the server's pid) and waits for
# nothing; the benchmark driver backgrounds it, polls readiness, and kills it (SIGTERM) by pid.
#
#   bench/peers.sh setup                      # npm ci for the Socket.IO peer (idempotent), checks
#                                             # the venv and the release binary
#   bench/peers.sh socketio PORT REDIS_URL    # Node: bench/socketio/server.js
#   bench/peers.sh django   PORT REDIS_URL    # daphne + the seed app (tests/django_seed), pubsub layer
#   bench/peers.sh django-async PORT REDIS_URL  # the fair Django row: uvicorn (uvloop, httptools)
#                                             # + an async consumer (bench/django_async), pubsub layer
#   bench/peers.sh rust     PORT REDIS_URL    # target/release/channels-server (Redis pub/sub layer)
#   bench/peers.sh rust-core PORT REDIS_URL   # the same with --layer redis-core
#   bench/peers.sh rust-history PORT REDIS_URL # rust with --history-size 100 (issue 14)
#   bench/peers.sh rust-cluster PORT redis+cluster://...  # the pub/sub layer on a Redis Cluster
#   bench/peers.sh floor    PORT REDIS_URL    # bench/floor.c (issue 18): no WebSocket library, no
#                                             # channel layer, one process; REDIS_URL is unused
#   bench/peers.sh wait KIND PORT [SECONDS]   # exit 0 once KIND on 127.0.0.1:PORT is ready (default 30 s)
#   bench/peers.sh ready-path KIND            # print the readiness path for KIND
#
# Readiness (GET on 127.0.0.1:PORT answers 200):
#   socketio  /healthz                  the port opens only after both Redis clients connected
#   django, django-async  /chatgroup?groupID=1  Django is loaded; the pubsub layer connects to Redis lazily,
#                                       on the first group_add, so this does not prove Redis is up
#   rust      /readyz                   the channel layer is connected (/healthz is liveness only
#                                       and answers as soon as the port is open)
#   floor     /readyz                   the port is open (it has nothing else to wait for)
#
# Every server binds 127.0.0.1:PORT. Environment knobs (all optional):
#   PEERS_NOFILE=1048576   open-file limit set before exec (the machine's default is 20000, too
#                          few for S-idle); falls back to the hard limit if it cannot be raised
#   PEERS_BACKLOG=1024     listen backlog for socketio and django (daphne/Twisted default 50,
#                          Node default 511; the Rust server's is 4096)
#   PEERS_DJANGO_STDOUT=discard|keep   the seed consumer print()s a line per received message and
#                          per connect/disconnect; by default its stdout goes to /dev/null
#                          (daphne -v 0 sends its own warnings to stderr, which is kept)
#   PEERS_RUST_ARGS="..."  more flags for the Rust server (the fixed scenario's rust-nodirect:
#                          "--direct-delivery false")
#   PEERS_RUST_BIN=PATH    the Rust binary (default ${CARGO_TARGET_DIR:-target}/release/channels-server)
#   PEERS_RUST_WORKERS=N   the Rust replicas' --workers (default 1: two replicas, two cores)
#   PEERS_FLOOR_BIN=PATH   the floor (default ${CARGO_TARGET_DIR:-target}/bench/floor, built by
#                          bench/run.sh with cc -O2)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"

die() {
    echo "bench/peers.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

raise_nofile() {
    local want="${PEERS_NOFILE:-1048576}"
    if ! ulimit -n "$want" 2>/dev/null; then
        ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
        echo "bench/peers.sh: could not raise the open-file limit to $want; it is $(ulimit -n)" >&2
    fi
}

need_port_url() {
    [ $# -eq 2 ] || usage
    case "$1" in '' | *[!0-9]*) die "PORT must be a number, got '$1'" ;; esac
    case "$2" in redis://* | rediss://* | redis+cluster://*) ;; *) die "REDIS_URL must be redis://..., got '$2'" ;; esac
}

ready_path() {
    case "$1" in
        socketio) echo "/healthz" ;;
        django | django-async) echo "/chatgroup?groupID=1" ;;
        rust | rust-core | rust-history | rust-cluster | floor) echo "/readyz" ;;
        *) die "unknown kind '$1' (socketio, django, django-async, rust, rust-core, rust-history, rust-cluster or floor)" ;;
    esac
}

# One HTTP/1.0 GET on 127.0.0.1:PORT with bash's /dev/tcp (no curl needed); prints the status code.
http_status() {
    local port="$1" path="$2" line
    exec 3<>"/dev/tcp/127.0.0.1/$port" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$path" "$port" >&3
    IFS= read -r -t 2 line <&3 || line=""
    exec 3<&- 3>&-
    line="${line#HTTP/1.? }"
    echo "${line%% *}"
}

rust_bin() {
    echo "${PEERS_RUST_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/channels-server}"
}

floor_bin() {
    echo "${PEERS_FLOOR_BIN:-${CARGO_TARGET_DIR:-$root/target}/bench/floor}"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    socketio)
        need_port_url "$@"
        command -v node >/dev/null 2>&1 || die "node is missing (Debian: apt-get install -y nodejs npm)"
        [ -d "$here/socketio/node_modules" ] || die "run bench/socketio/setup.sh (or bench/peers.sh setup) first"
        raise_nofile
        cd "$here/socketio"
        PORT="$1" REDIS_URL="$2" BACKLOG="${PEERS_BACKLOG:-1024}" exec node server.js
        ;;
    django)
        need_port_url "$@"
        daphne="$root/.venv/bin/daphne"
        [ -x "$daphne" ] || die "$daphne is missing: run scripts/python-venv.sh first"
        raise_nofile
        cd "$root/tests/django_seed"
        export SEED_LAYER=pubsub SEED_REDIS_URLS="$2"
        # -v 0: log level WARNING and no access log (at the default -v 1 daphne writes an access
        # line to stdout for every HTTP request and every WebSocket handshake/connect/disconnect).
        # -e instead of -b/-p to set the listen backlog (Twisted's default is 50).
        args=(-v 0 -e "tcp:port=$1:interface=127.0.0.1:backlog=${PEERS_BACKLOG:-1024}" djangoProject.asgi:application)
        if [ "${PEERS_DJANGO_STDOUT:-discard}" = keep ]; then
            exec "$daphne" "${args[@]}"
        fi
        exec "$daphne" "${args[@]}" >/dev/null
        ;;
    django-async)
        # What a Django shop would run for these texts: an AsyncWebsocketConsumer (no
        # async_to_sync thread hop and no print per message) under uvicorn with uvloop and
        # httptools, one process per replica: asyncio is single-threaded, so the two replicas
        # are the two worker processes for the two cores, as for every other system here.
        need_port_url "$@"
        uvicorn="$root/.venv/bin/uvicorn"
        [ -x "$uvicorn" ] || die "$uvicorn is missing: run scripts/python-venv.sh first"
        raise_nofile
        cd "$here/django_async"
        export SEED_LAYER=pubsub SEED_REDIS_URLS="$2" PYTHONPATH="$root/tests/django_seed"
        exec "$uvicorn" --host 127.0.0.1 --port "$1" --backlog "${PEERS_BACKLOG:-1024}" \
            --loop uvloop --http httptools --ws websockets-sansio --log-level warning --no-access-log \
            asgi:application
        ;;
    rust | rust-core | rust-history | rust-cluster)
        layer=redis-pubsub
        [ "$cmd" = rust-core ] && layer=redis-core
        extra=()
        [ "$cmd" = rust-history ] && extra=(--history-size 100)
        # More flags for the Rust server, e.g. PEERS_RUST_ARGS="--direct-delivery false".
        read -r -a more <<< "${PEERS_RUST_ARGS:-}"
        extra+=("${more[@]}")
        need_port_url "$@"
        bin="$(rust_bin)"
        [ -x "$bin" ] || die "$bin is missing: cargo build --release -p channels-server"
        raise_nofile
        # The benchmark's publishers send thousands of messages/s on one connection and its
        # idle test opens thousands per source address: lift the per-connection message rate
        # and per-address connection caps, WebSocket and HTTP (abuse limits, not capacity
        # limits: the HTTP one, 64 by default, refuses the load generator's concurrent
        # handshakes with 429). The peers have no such limits.
        # Two replicas share this machine's cores: one thread each (${PEERS_RUST_WORKERS:-1}),
        # like the single-threaded peers, instead of each assuming it has every core.
        exec "$bin" --bind "127.0.0.1:$1" --redis-url "$2" --layer "$layer" --log-level warn \
            --max-messages-per-second 0 --max-connections-per-ip 0 --max-http-connections-per-ip 0 \
            --workers "${PEERS_RUST_WORKERS:-1}" "${extra[@]}"
        ;;
    floor)
        # The same arguments as the others, so the driver starts every kind alike; the floor has
        # no channel layer, so one process serves every group and REDIS_URL goes unused.
        need_port_url "$@"
        bin="$(floor_bin)"
        [ -x "$bin" ] || die "$bin is missing: cc -O2 -o $bin bench/floor.c (bench/run.sh does it)"
        raise_nofile
        exec "$bin" "$1" "${PEERS_BACKLOG:-1024}"
        ;;
    wait)
        [ $# -ge 2 ] || usage
        kind="$1" port="$2" secs="${3:-30}"
        path="$(ready_path "$kind")"
        deadline=$((SECONDS + secs))
        while [ "$SECONDS" -lt "$deadline" ]; do
            if [ "$(http_status "$port" "$path" 2>/dev/null || true)" = 200 ]; then
                exit 0
            fi
            sleep 0.1
        done
        die "$kind on 127.0.0.1:$port not ready (GET $path) after ${secs}s"
        ;;
    ready-path)
        [ $# -eq 1 ] || usage
        ready_path "$1"
        ;;
    setup)
        "$here/socketio/setup.sh"
        [ -x "$root/.venv/bin/daphne" ] || die "$root/.venv/bin/daphne is missing: run scripts/python-venv.sh"
        [ -x "$root/.venv/bin/uvicorn" ] || die "$root/.venv/bin/uvicorn is missing: run scripts/python-venv.sh"
        [ -x "$(rust_bin)" ] || echo "bench/peers.sh: note: $(rust_bin) is not built yet (cargo build --release -p channels-server)" >&2
        command -v redis-server >/dev/null 2>&1 || die "redis-server is missing (Debian: apt-get install -y redis-server)"
        echo "bench/peers.sh: setup done" >&2
        ;;
    -h | --help | help | "") usage ;;
    *) die "unknown subcommand '$cmd' (setup, socketio, django, django-async, rust, rust-core, rust-history, rust-cluster, floor, wait, ready-path)" ;;
esac
