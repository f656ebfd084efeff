#!/usr/bin/env bash
# `docker compose up`, for real: builds deploy/Dockerfile and brings up the shipped
# docker-compose.yml (redis, three replicas, nginx on 8080) on a private Docker engine, then
# checks it (channels-compose-check) and takes it down. Called by scripts/test.sh.
#
# The private engine: Debian's dockerd with its own data root, exec root, pid file and socket,
# started inside a network namespace made here (so its bridge, iptables rules and port 8080
# cannot clash with a Docker engine the user already runs, which is never touched). The
# namespace reaches the network through a veth pair and one MASQUERADE rule on the host, both
# removed on exit, as are the engine and its data root, however the script exits.
#
# Base images: no container registry is reachable here, so each base image named by
# deploy/Dockerfile and docker-compose.yml that cannot be pulled is replaced by a stand-in
# built under exactly that name, inside the private engine only (see deploy/README.md,
# "docker compose up, tested"). The differences a stand-in forces are overridden in a compose
# override file generated here, and printed.
#
# Usage: scripts/compose-test.sh   (as root, or through sudo; takes no arguments)
# Needs: Debian's docker.io, docker-compose, debootstrap, iptables, iproute2 (installed with
# apt-get when missing), the machine's Rust toolchain of the version deploy/Dockerfile names,
# and network access to the Debian archive and crates.io.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD

say() { echo "compose-test: $*"; }
fail() {
  echo "compose-test: FAILED: $*" >&2
  exit 1
}

if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || fail "must run as root (dockerd, network namespaces)"
  exec sudo --preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME "$0" "$@"
fi

# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
needs=(docker.io:dockerd docker.io:/usr/bin/docker docker-compose:docker-compose
  debootstrap:debootstrap iptables:iptables iproute2:ip)
# Installing docker.io must not start Debian's own (system) engine: while it installs, a
# policy-rc.d (when the machine has none) tells the package scripts not to start services.
policy=
if [[ -n $(missing_packages "${needs[@]}") && ! -e /usr/sbin/policy-rc.d ]]; then
  policy=/usr/sbin/policy-rc.d
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
fi
# shellcheck disable=SC2046
if ! ensure_packages "compose-test: " "${needs[@]}"; then
  [[ -n $policy ]] && rm -f "$policy"
  fail "missing Debian packages:" $(missing_packages "${needs[@]}")
fi
[[ -n $policy ]] && rm -f "$policy"
# /usr/bin/docker is Debian's CLI, the one that matches Debian's dockerd (another `docker` may
# come first on PATH).
docker_cli=/usr/bin/docker

cache=$repo/target/compose-cache # kept between runs (ignored by git): the debootstrap rootfs
mkdir -p "$cache"
work=$(mktemp -d /tmp/channels-compose.XXXXXX)
ns=channels-compose-$$
veth_host=chc$$h
veth_ns=chc$$n
project=channelscompose
export DOCKER_HOST=unix://$work/docker.sock
# The classic builder: BuildKit would fetch the `# syntax=` frontend image from a registry.
export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
dockerd_pid=
nat_rule=()
forward_rules=()
old_forward=$(cat /proc/sys/net/ipv4/ip_forward)

cleanup() {
  local rc=$?
  set +e
  if ((rc != 0)) && compgen -G "$work/*.log" >/dev/null; then
    mkdir -p "$cache/last-failure"
    cp "$work"/*.log "$cache/last-failure/"
    echo "compose-test: logs kept in $cache/last-failure/" >&2
  fi
  if [[ -n $dockerd_pid ]] && kill -0 "$dockerd_pid" 2>/dev/null; then
    if ((rc != 0)); then
      echo "compose-test: the last lines of dockerd's log:" >&2
      tail -n 20 "$work/dockerd.log" >&2
    fi
    kill -TERM "$dockerd_pid"
    for _ in $(seq 1 60); do
      kill -0 "$dockerd_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$dockerd_pid" 2>/dev/null
  fi
  # Whatever is still in the namespace was started by this script (the engine's children).
  if ip netns list | grep -qw "$ns"; then
    for pid in $(ip netns pids "$ns"); do kill -KILL "$pid" 2>/dev/null; done
    sleep 0.5
    ip netns del "$ns"
  fi
  ip link del "$veth_host" 2>/dev/null
  ((${#nat_rule[@]})) && iptables -t nat -D POSTROUTING "${nat_rule[@]}"
  for rule in "${forward_rules[@]}"; do
    # shellcheck disable=SC2086 # one rule, split into its words
    iptables -D FORWARD $rule
  done
  echo "$old_forward" >/proc/sys/net/ipv4/ip_forward
  # The engine unmounts its layers when it stops; a killed one may leave some behind.
  findmnt -rn -o TARGET | grep -F "$work/" | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$work"
  [[ -e $work ]] && echo "compose-test: could not remove $work" >&2
  if ((rc == 0)); then say "engine stopped, $work removed"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- the private engine -------------------------------------------------------------------
start_engine() {
  local subnet host_ip ns_ip i
  # A /30 for the veth pair that no interface here uses yet.
  for i in $(seq 0 63); do
    subnet=10.213.$((($$ + i) % 250)).
    ip -4 addr | grep -qF "inet $subnet" || break
  done
  host_ip=${subnet}1
  ns_ip=${subnet}2
  ip netns add "$ns"
  ip link add "$veth_host" type veth peer name "$veth_ns"
  ip link set "$veth_ns" netns "$ns"
  ip addr add "$host_ip/30" dev "$veth_host"
  ip link set "$veth_host" up
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip addr add "$ns_ip/30" dev "$veth_ns"
  ip netns exec "$ns" ip link set "$veth_ns" up
  ip netns exec "$ns" ip route add default via "$host_ip"
  echo 1 >/proc/sys/net/ipv4/ip_forward
  nat_rule=(-s "$ns_ip/32" ! -o "$veth_host" -j MASQUERADE)
  iptables -t nat -A POSTROUTING "${nat_rule[@]}"
  forward_rules=("-i $veth_host -j ACCEPT" "-o $veth_host -j ACCEPT")
  for rule in "${forward_rules[@]}"; do
    # shellcheck disable=SC2086
    iptables -I FORWARD 1 $rule
  done
  say "private engine: dockerd in network namespace $ns (veth $host_ip <-> $ns_ip)," \
    "data root $work/data, socket $work/docker.sock"
  # nsenter rather than `ip netns exec`, which would mount a fresh /sys without the cgroup
  # hierarchies dockerd needs: only the network namespace is the engine's own.
  nsenter --net="/var/run/netns/$ns" dockerd \
    --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
    -H "unix://$work/docker.sock" >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 120); do
    "$docker_cli" version >/dev/null 2>&1 && return 0
    kill -0 "$dockerd_pid" 2>/dev/null || break
    sleep 0.5
  done
  tail -n 30 "$work/dockerd.log" >&2
  fail "the private dockerd did not start (its log is above)"
}

# ---- stand-ins for the base images ----------------------------------------------------------
standins=() # "name: what it is" lines for the summary
base=channels-compose-standin/debian:bookworm

bookworm_rootfs() {
  if [[ ! -f $cache/rootfs/etc/debian_version ]]; then
    say "debootstrap: a Debian bookworm rootfs into $cache/rootfs (once; cached)"
    rm -rf "$cache/rootfs.tmp"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$cache/rootfs.tmp" \
      http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
      fail "debootstrap failed: see $cache/debootstrap.log"
    mv "$cache/rootfs.tmp" "$cache/rootfs"
  fi
  if ! "$docker_cli" image inspect "$base" >/dev/null 2>&1; then
    tar -C "$cache/rootfs" -c --exclude='./var/cache/apt/archives/*.deb' --exclude='./proc/*' \
      --exclude='./sys/*' --exclude='./dev/*' . |
      "$docker_cli" import --change 'CMD ["bash"]' - "$base" >/dev/null
  fi
}

# A Dockerfile on stdin, built as $1 with the context dir $2.
build_standin() {
  local name=$1 context=$2
  mkdir -p "$context"
  "$docker_cli" build -q -t "$name" -f - "$context" >/dev/null ||
    fail "cannot build the stand-in $name"
}

standin_rust() {
  local name=$1 version sysroot ctx
  version=${name#rust:}
  version=${version%%-*}
  sysroot=$(rustc "+$version" --print sysroot 2>/dev/null) || sysroot=$(rustc --print sysroot)
  [[ $("$sysroot/bin/rustc" --version) == "rustc $version"* ]] ||
    fail "$name: the machine has no Rust $version toolchain (rustup toolchain install $version)"
  ctx=$work/ctx-rust
  mkdir -p "$ctx/rust"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
  # Hard links where the file system allows it: the toolchain is 600 MB.
  cp -al "$sysroot/bin" "$sysroot/lib" "$sysroot/libexec" "$ctx/rust/" 2>/dev/null ||
    cp -a "$sysroot/bin" "$sysroot/lib" "$sysroot/libexec" "$ctx/rust/"
  build_standin "$name" "$ctx" <<EOF
FROM $base
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      gcc libc6-dev make pkg-config && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY rust/ /usr/local/rust/
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version
EOF
  standins+=("$name: Debian bookworm (debootstrap) + this machine's $("$sysroot/bin/rustc" --version | cut -d' ' -f1-2) from $sysroot + gcc, libc6-dev + this machine's CA bundle (crates.io through its proxy)")
}

standin_redis() {
  local name=$1
  # The official image's redis is built with protected mode off; Debian's has it on, and
  # then refuses the replicas (DENIED). The wrapper comes first on PATH, so the compose
  # file's `command: [redis-server, ...]` and the health check's redis-cli stay as shipped.
  build_standin "$name" "$work/ctx-empty" <<EOF
FROM $base
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      redis-server && rm -rf /var/lib/apt/lists/* \
    && printf '#!/bin/sh\nexec /usr/bin/redis-server "\$@" --protected-mode no\n' \
       > /usr/local/bin/redis-server && chmod 755 /usr/local/bin/redis-server \
    && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
EOF
  standins+=("$name: Debian's redis-server $("$docker_cli" run --rm "$name" redis-server --version | grep -o 'v=[0-9.]*'), started with --protected-mode no (as the official image is built)")
}

standin_nginx() {
  local name=$1
  # The official image: prefix /etc/nginx/, `daemon off`, logs to the container's output.
  build_standin "$name" "$work/ctx-empty" <<EOF
FROM $base
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      nginx && rm -rf /var/lib/apt/lists/*
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-p", "/etc/nginx/", "-g", "daemon off;"]
EOF
  standins+=("$name: Debian's nginx $("$docker_cli" run --rm "$name" nginx -v 2>&1 | grep -o '[0-9.]*$')")
}

standin_distroless() {
  local name=$1 root=$work/distroless list dir f
  # What distroless cc-debian12 holds that a binary can use: glibc, libgcc_s, the CA bundle,
  # passwd/group with nonroot (65532), /tmp; no shell.
  mkdir -p "$root"/{etc/ssl/certs,tmp,home/nonroot,root,usr/lib,usr/lib64,usr/bin,usr/sbin}
  chmod 1777 "$root/tmp"
  for dir in bin lib lib64 sbin; do ln -s "usr/$dir" "$root/$dir"; done
  for list in "$cache"/rootfs/var/lib/dpkg/info/{libc6,libgcc-s1}:amd64.list; do
    while IFS= read -r f; do
      # Directories, and the usr-merge links to them, are made above.
      [[ -d $cache/rootfs$f ]] && continue
      [[ -e $cache/rootfs$f || -L $cache/rootfs$f ]] || continue
      # /lib/... and /lib64/... are usr-merged: copy to the real directory.
      dir=$(realpath --relative-to="$cache/rootfs" "$cache/rootfs$(dirname "$f")")
      mkdir -p "$root/$dir"
      cp -a "$cache/rootfs$f" "$root/$dir/"
    done <"$list"
  done
  case $name in
  *nonroot*) user=65532:65532 ;;
  *) user=0:0 ;;
  esac
  cp "$cache/rootfs/etc/ssl/certs/ca-certificates.crt" "$root/etc/ssl/certs/"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin' \
    'nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin' >"$root/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nobody:x:65534:' 'nonroot:x:65532:' >"$root/etc/group"
  tar -C "$root" -c . | "$docker_cli" import \
    --change "USER $user" --change 'WORKDIR /home/nonroot' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' - "$name" >/dev/null
  standins+=("$name: Debian bookworm's libc6 and libgcc-s1 files, Debian's CA bundle, passwd/group with nonroot, USER $user, no shell")
}

# The base images the shipped files name: FROM lines (not stages) and compose `image:`s
# other than the one compose builds.
base_images() {
  awk 'toupper($1) == "FROM" { print $2 }' deploy/Dockerfile | while read -r image; do
    grep -qiE "^FROM .* AS $image\$" deploy/Dockerfile || echo "$image"
  done
  sed -n 's/^    image: *//p' docker-compose.yml | grep -vx 'channels-server:local'
}

provide_base_images() {
  local image
  for image in $(base_images | sort -u); do
    if timeout 60 "$docker_cli" pull -q "$image" >/dev/null 2>&1; then
      say "pulled $image"
      continue
    fi
    say "cannot pull $image: building a stand-in under that name (private engine only)"
    case $image in
    rust:*) standin_rust "$image" ;;
    redis:*) standin_redis "$image" ;;
    nginx:*) standin_nginx "$image" ;;
    gcr.io/distroless/cc-debian12:*) standin_distroless "$image" ;;
    *) fail "no stand-in known for the base image $image" ;;
    esac
  done
}

# ---- the compose override -----------------------------------------------------------------
overrides=()
write_override() {
  local override=$work/compose.override.yml nginx_line
  cp deploy/nginx/nginx.conf "$work/nginx.conf"
  if [[ " ${standins[*]} " == *" nginx:"* ]]; then
    # Debian's nginx 1.22 has no `resolve` (upstream nginx 1.27.3+): drop it from the one
    # upstream line; nginx then resolves `server` once at start, and is reloaded after a scale.
    sed -i '/# test: upstream$/ s/ resolve / /' "$work/nginx.conf"
    nginx_line=$(grep '# test: upstream$' "$work/nginx.conf")
    [[ $(diff deploy/nginx/nginx.conf "$work/nginx.conf" | grep -c '^>') == 1 ]] ||
      fail "the nginx override did not change exactly the upstream line"
    overrides+=("nginx.conf: the upstream line without \`resolve\` (Debian's nginx 1.22):$nginx_line")
  fi
  cat >"$override" <<EOF
services:
  nginx:
    volumes:
      - $work/nginx.conf:/etc/nginx/nginx.conf:ro
EOF
  overrides+=("docker-compose --compatibility: Debian's docker-compose 1.29 honours deploy.replicas only with it")
  compose=(docker-compose --compatibility -p "$project" -f docker-compose.yml -f "$override")
}

# ---- helpers on the running stack -----------------------------------------------------------
server_containers() {
  "$docker_cli" ps -q --filter "label=com.docker.compose.project=$project" \
    --filter label=com.docker.compose.service=server
}

# wait_healthy N: N server containers, each healthy by the image's HEALTHCHECK.
wait_healthy() {
  local want=$1 ids healthy c
  for _ in $(seq 1 120); do
    ids=$(server_containers)
    healthy=0
    for c in $ids; do
      [[ $("$docker_cli" inspect -f '{{.State.Health.Status}}' "$c") == healthy ]] &&
        healthy=$((healthy + 1))
    done
    if [[ $(wc -w <<<"$ids") == "$want" && $healthy == "$want" ]]; then
      say "$want server replicas healthy by their HEALTHCHECK"
      return 0
    fi
    sleep 1
  done
  "${compose[@]}" ps >&2
  "${compose[@]}" logs --tail 20 >&2
  fail "expected $want healthy server replicas, have $healthy of $(wc -w <<<"$ids")"
}

check() {
  ip netns exec "$ns" env DOCKER_HOST="$DOCKER_HOST" "$repo/target/debug/channels-compose-check" \
    --docker "$docker_cli" --project "$project" "$@"
}

# The server runs as 65532 with a read-only root and no capabilities, seen from the host
# (the image has no shell to ask).
check_hardening() {
  local c pid uid caps root_opts
  for c in $(server_containers); do
    [[ $("$docker_cli" inspect -f '{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}}' "$c") == "true [ALL]" ]] ||
      fail "$c: not read-only with all capabilities dropped"
    pid=$("$docker_cli" inspect -f '{{.State.Pid}}' "$c")
    uid=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
    caps=$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")
    root_opts=$(awk '$5 == "/" { print $6 }' "/proc/$pid/mountinfo")
    [[ $uid == "65532 65532 65532 65532" ]] || fail "$c: the server runs as uid $uid"
    [[ $caps == 0000000000000000 ]] || fail "$c: effective capabilities $caps"
    [[ $root_opts == ro,* ]] || fail "$c: its root is mounted $root_opts"
  done
  say "every server process: uid 65532, no capabilities, root file system read-only"
}

# ---- run ------------------------------------------------------------------------------------
say "building channels-compose-check"
cargo build --locked -q -p system-tests --bin channels-compose-check

start_engine
t=$SECONDS
bookworm_rootfs
provide_base_images
say "base images ready in $((SECONDS - t)) s"
write_override

say "first build: ${compose[*]} build"
t=$SECONDS
"${compose[@]}" build >"$work/build1.log" 2>&1 || {
  tail -n 40 "$work/build1.log" >&2
  fail "the image did not build"
}
first_build=$((SECONDS - t))
say "first build: ${first_build} s"

# A second build after a change to our code only: the dependency layer (cargo chef cook) is
# cached. The context is a copy (the work tree is not touched), with one line added.
ctx2=$work/ctx2
mkdir -p "$ctx2"
git ls-files -co --exclude-standard -z | tar -c --null -T - | tar -C "$ctx2" -x
echo "// compose-test: a change after the first build" >>"$ctx2/crates/server/src/main.rs"
t=$SECONDS
"$docker_cli" build -f "$ctx2/deploy/Dockerfile" -t channels-server:rebuilt "$ctx2" >"$work/build2.log" 2>&1 || {
  tail -n 40 "$work/build2.log" >&2
  fail "the second build failed"
}
second_build=$((SECONDS - t))
say "second build (one line of crates/server/src/main.rs changed): ${second_build} s"
grep -q 'cargo chef cook' "$work/build2.log" && ! grep -A2 'cargo chef cook' "$work/build2.log" | grep -q 'Using cache' &&
  fail "the second build did not use the cached dependency layer"
"$docker_cli" rmi channels-server:rebuilt >/dev/null

say "up: ${compose[*]} up -d"
"${compose[@]}" up -d >"$work/up.log" 2>&1 || {
  cat "$work/up.log" >&2
  fail "compose up failed"
}
wait_healthy 3
check_hardening
check chat --clients 6
check stop --clients 6 --drain-secs 30

say "scale: ${compose[*]} up -d --scale server=5"
"${compose[@]}" up -d --scale server=5 >>"$work/up.log" 2>&1 || fail "compose up --scale failed"
wait_healthy 5
if ((${#overrides[@]} > 1)); then
  # Without `resolve`, nginx knows only the replicas it resolved at start: reload it.
  say "nginx reload (the stand-in nginx has no \`resolve\`)"
  "$docker_cli" kill -s HUP "$("${compose[@]}" ps -q nginx)" >/dev/null
  sleep 2
fi
check_hardening
check chat --clients 10 --group compose_scaled

say "down: ${compose[*]} down -v"
"${compose[@]}" down -v --remove-orphans >"$work/down.log" 2>&1 || fail "compose down failed"
left=$("$docker_cli" ps -aq; "$docker_cli" network ls -q --filter "label=com.docker.compose.project=$project"; "$docker_cli" volume ls -q)
[[ -z $left ]] || fail "down left behind: $left"
say "down left no container, network or volume"

# ---- figures ------------------------------------------------------------------------------------
image_size=$("$docker_cli" image inspect -f '{{.Size}}' channels-server:local)
base_size=$("$docker_cli" image inspect -f '{{.Size}}' gcr.io/distroless/cc-debian12:nonroot)
added=$((image_size - base_size))
echo
echo "compose-test: stand-ins (built in the private engine only, under the names the files use):"
printf '  %s\n' "${standins[@]}"
echo "compose-test: overrides of the shipped files:"
printf '  %s\n' "${overrides[@]}"
echo "compose-test: figures:"
echo "  first build of the image: ${first_build} s; second build, dependency layer cached: ${second_build} s"
# The runtime image is the distroless base plus what the Dockerfile adds on top of it (the
# binary); the stand-in base is not the real one, so only the added part is measured here.
echo "  runtime image: gcr.io/distroless/cc-debian12:nonroot + $((added / 1000)) kB added by the Dockerfile"
echo "  (stand-in runtime image $((image_size / 1000)) kB - stand-in base $((base_size / 1000)) kB;"
echo "  the real base's size cannot be read here: no registry)"
echo "compose-test: passed"
