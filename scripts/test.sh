#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy, and the whole test suite.
#
# Some tests start their own redis-server, nginx and Chromium (with chromedriver), and fail if
# those programs are missing. So this script first installs the Debian packages that provide
# them with apt-get (through sudo when not root). If it cannot, it names the missing packages
# and exits non-zero.
#
# Usage: scripts/test.sh   (README and .ci/run call it; it takes no arguments)
set -euo pipefail

cd "$(dirname "$0")/.."

# Each Debian package the tests need, as package:program-the-tests-run.
needs=(redis-server:redis-server nginx:nginx chromium:chromium chromium-driver:chromedriver)

# Prints the packages whose program is neither on PATH nor in /usr/sbin (where nginx lives,
# and which is often not on a non-root PATH).
missing_packages() {
  local need
  for need in "${needs[@]}"; do
    if ! command -v "${need#*:}" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/${need#*:}" ]]; then
      echo "${need%%:*}"
    fi
  done
}

# Installs the given packages with apt-get, as root or through sudo.
install_packages() {
  local sudo=()
  command -v apt-get >/dev/null 2>&1 || return 1
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || return 1
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "$@"
}

missing=$(missing_packages)
if [[ -n $missing ]]; then
  # $missing is left unquoted on purpose: one package name per word.
  echo "installing missing Debian packages:" $missing
  if ! install_packages $missing || [[ -n $(missing_packages) ]]; then
    echo "missing Debian packages:" $(missing_packages) >&2
    echo "install them as root: apt-get install" $(missing_packages) >&2
    exit 1
  fi
fi

scripts/python-venv.sh
scripts/check-deploy.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
