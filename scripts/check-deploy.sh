#!/usr/bin/env bash
# Validates the deployment files as far as a machine without a Docker engine can:
#   compose   docker-compose.yml against the compose-spec schema (check-jsonschema's vendored
#             copy) and with `docker-compose config -q` (Debian's docker-compose 1.29, which
#             needs no engine for `config`);
#   nginx     `nginx -t` on deploy/nginx/nginx.conf rendered exactly as the system tests render
#             it (the `# test: listen` / `# test: upstream` lines replaced, -p a temp dir);
#   k8s       deploy/k8s/**.yaml against the Kubernetes 1.30 (oldest with the preStop `sleep`
#             handler) and 1.37 schemas with `kubernetes-validate --strict`;
#   consistency  deploy/check/consistency.py: probe paths, ports, selectors, grace >= preStop +
#             drain, the same drain everywhere, the Redis Service, the HTTPRoute, the markers;
#   dockerfile  hadolint on deploy/Dockerfile.
# Images are not built and containers are not run: that needs a Docker engine.
#
# Installs what it needs when missing: the Debian packages nginx and docker-compose (apt-get, as
# root or through sudo), and the pinned validators of deploy/check/requirements.txt into the
# project venv .venv (made by scripts/python-venv.sh). Idempotent; a few seconds once installed.
# Every check runs; each failure says what is wrong; the exit status is 1 if any failed.
#
# Usage: scripts/check-deploy.sh   (scripts/test.sh calls it; it takes no arguments)
set -euo pipefail

cd "$(dirname "$0")/.."

venv=.venv
requirements=deploy/check/requirements.txt
constraints=tests/python/requirements.txt
stamp=$venv/.deploy-check.sha256

fail() {
  echo "check-deploy: $*" >&2
  exit 1
}

# ---- tools -------------------------------------------------------------------------------------

# Debian packages, as package:program (nginx lives in /usr/sbin, often not on a non-root PATH).
needs=(nginx:nginx docker-compose:docker-compose)

# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
ensure_packages "check-deploy: " "${needs[@]}" ||
  fail "missing Debian packages: $(missing_packages "${needs[@]}" | tr '\n' ' ')(apt-get install them as root)"
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

# The venv (a no-op when it is up to date), then the validators into it. Installing under the
# lock that scripts/python-venv.sh takes keeps a concurrent venv rebuild from racing this; the
# interop pins go in as constraints, so this install never changes their versions.
scripts/python-venv.sh
want=$(cat "$requirements" "$constraints" | sha256sum | cut -d' ' -f1)
tools=("$venv/bin/check-jsonschema" "$venv/bin/kubernetes-validate" "$venv/bin/hadolint")
tools_present() {
  local tool
  for tool in "${tools[@]}"; do [[ -x $tool ]] || return 1; done
  "$venv/bin/python" -c 'import yaml' 2>/dev/null
}
if ! [[ -f $stamp && $(<"$stamp") == "$want" ]] || ! tools_present; then
  echo "check-deploy: installing $requirements into $venv"
  (
    if command -v flock >/dev/null 2>&1; then
      exec 9<scripts/python-venv.sh
      flock 9
    fi
    rm -f "$stamp"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
      --progress-bar off -r "$requirements" -c "$constraints" ||
      fail "pip install -r $requirements failed (see the pip output above)"
    "$venv/bin/python" -m pip check --disable-pip-version-check >/dev/null ||
      fail "$venv is inconsistent after installing $requirements: run $venv/bin/python -m pip check"
    echo "$want" >"$stamp"
  )
  tools_present || fail "the validators are still missing from $venv after the install"
fi

# ---- checks ------------------------------------------------------------------------------------

failed=()
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Runs one named check, showing its output only when it fails.
check() {
  local name=$1
  shift
  if "$@" >"$tmp/out" 2>&1; then
    echo "check-deploy: $name: ok"
  else
    echo "check-deploy: $name: FAILED"
    sed 's/^/    /' "$tmp/out"
    failed+=("$name")
  fi
}

# nginx: render deploy/nginx/nginx.conf as the system tests do, then `nginx -t` it the way they
# start it. The marked lines are replaced whole: one listen line, one server line per replica.
render_nginx() {
  local out=$1 listen=$2
  shift 2
  awk -v listen="$listen" -v servers="$*" '
    /# test: listen/ {
      match($0, /^[ \t]*/); print substr($0, 1, RLENGTH) "listen 127.0.0.1:" listen ";"
      n_listen++; next
    }
    /# test: upstream/ {
      if (!done) {
        match($0, /^[ \t]*/); indent = substr($0, 1, RLENGTH)
        split(servers, ports, " ")
        for (i = 1; i in ports; i++) print indent "server 127.0.0.1:" ports[i] ";"
        done = 1
      }
      n_upstream++; next
    }
    { print }
    END {
      if (n_listen != 1) { print "expected one # test: listen line, found " n_listen > "/dev/stderr"; exit 1 }
      if (n_upstream < 1) { print "no # test: upstream line" > "/dev/stderr"; exit 1 }
    }' deploy/nginx/nginx.conf >"$out"
}
nginx_test() {
  local dir=$tmp/nginx
  mkdir -p "$dir"
  render_nginx "$dir/nginx.conf" 18080 18001 18002 18003 || return 1
  "$nginx_bin" -t -p "$dir" -c "$dir/nginx.conf" \
    -g "daemon off; pid $dir/nginx.pid; error_log stderr;"
}

check "compose: compose-spec schema (check-jsonschema)" \
  "$venv/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
check "compose: docker-compose config -q" \
  docker-compose --project-directory . -f docker-compose.yml config -q
check "nginx: nginx -t on the rendered config ($("$nginx_bin" -v 2>&1 | sed 's/.*: //'))" \
  nginx_test
mapfile -t manifests < <(find deploy/k8s -name '*.yaml' -o -name '*.yml' | sort)
for version in 1.30.0 1.37.0; do
  check "k8s: kubernetes-validate --strict, Kubernetes $version" \
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
done
check "consistency: deploy/check/consistency.py" \
  "$venv/bin/python" deploy/check/consistency.py .
check "dockerfile: hadolint $("$venv/bin/hadolint" --version | sed 's/.* //')" \
  "$venv/bin/hadolint" deploy/Dockerfile

if ((${#failed[@]})); then
  echo "check-deploy: ${#failed[@]} check(s) failed: ${failed[*]}" >&2
  exit 1
fi
echo "check-deploy: all deployment checks passed (no image was built and no container run:" \
  "there is no Docker engine here)"
