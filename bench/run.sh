#!/usr/bin/env bash
# The benchmark command: installs the Debian packages it needs when missing (apt-get), builds
# release binaries, installs the peers' dependencies (the pinned Python venv and the Socket.IO
# server's npm packages), raises the open-file limit, and runs bench/run.py, which starts
# redis-server and every system and prints a Markdown summary (the JSON goes to bench/results/).
# Arguments are passed to bench/run.py (--help lists them).
#
#   bench/run.sh                       # everything (about 45 minutes on 2 cores)
#   bench/run.sh --systems rust --skip idle,echo
set -euo pipefail
cd "$(dirname "$0")/.."

# Each Debian package the bench needs, as package:program; missing ones are installed with
# apt-get (through sudo when not root), as scripts/test.sh does.
needs=(redis-server:redis-server redis-tools:redis-cli nodejs:node npm:npm python3:python3 gcc:cc wrk:wrk)
# shellcheck source=scripts/lib/apt.sh
source scripts/lib/apt.sh
require_packages "bench/run.sh: " "${needs[@]}"
cargo build --release --locked -p channels-server -p system-tests \
  --bin channels-server --bin channels-loadgen
# The floor (bench/floor.c): the yardstick of the "fixed" scenario; bench/peers.sh floor runs it.
mkdir -p "${CARGO_TARGET_DIR:-target}/bench"
cc -O2 -Wall -Wextra -o "${CARGO_TARGET_DIR:-target}/bench/floor" bench/floor.c
scripts/python-venv.sh
bench/peers.sh setup
# 50,000 idle connections need 100,000 descriptors on this side and the server's.
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/run.py "$@"
