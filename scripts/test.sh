#!/usr/bin/env bash
# Runs every check CI runs: formatting, clippy, the API docs, the whole test suite, and the
# compose stack brought up for real (scripts/compose-test.sh).
#
# Some tests start their own redis-server (one with TLS, its certificate made by openssl), nginx
# and Chromium (with chromedriver), and fail if those programs are missing. So this script first
# installs the Debian packages that provide them with apt-get (through sudo when not root). If it
# cannot, it names the missing packages and exits non-zero.
#
# Usage: scripts/test.sh   (README and .ci/run call it; it takes no arguments)
set -euo pipefail

cd "$(dirname "$0")/.."

# Each Debian package the tests need, as package:program-the-tests-run.
needs=(redis-server:redis-server redis-tools:redis-cli openssl:openssl nginx:nginx chromium:chromium chromium-driver:chromedriver)

# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
require_packages "" "${needs[@]}"

# From a clean clone the whole command takes about 10 GB of disk (target/ 4.5 GB, the fuzz
# targets 1.7 GB, the private Docker engine's images and containers the rest). Say so up front
# when less is free, so that a build that runs out of space is not a riddle.
free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
if ((free_gb < 10)); then
  echo "scripts/test.sh: warning: $free_gb GB free on $(df -P . | awk 'NR == 2 { print $6 }');" \
    "a run from a clean clone needs about 10 GB (less when target/ is already built)" >&2
fi

scripts/python-venv.sh
scripts/check-deploy.sh
cargo fmt --all --check
# Modules depend on each other in one direction (no module imports one that imports it back).
python3 scripts/check-modules.py crates/server crates/layer crates/web crates/test-support
cargo clippy --workspace --all-targets --locked -- -D warnings
# Every public item documented, no broken intra-doc link.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
scripts/fuzz.sh --short
cargo test --workspace --locked
# `docker compose up` for real: the image built and the shipped stack up on a private Docker
# engine (it installs docker.io, docker-compose and debootstrap with apt-get when missing).
scripts/compose-test.sh
