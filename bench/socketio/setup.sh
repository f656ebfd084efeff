#!/usr/bin/env bash
# Installs the Socket.IO peer's npm packages exactly as pinned in package-lock.json (npm ci).
# Idempotent: runs npm ci only when node_modules is missing or package-lock.json changed since the
# last successful install (its sha256 is kept in node_modules/.bench-lock.sha256).
#
#   bench/socketio/setup.sh          # from anywhere
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "bench/socketio/setup.sh: node and npm are required (Node.js >= 18)." >&2
    echo "  On Debian: apt-get update && apt-get install -y nodejs npm" >&2
    exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 18 ]; then
    echo "bench/socketio/setup.sh: Node.js >= 18 is required, found $(node --version)." >&2
    exit 1
fi

stamp="node_modules/.bench-lock.sha256"
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [ -d node_modules ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

echo "bench/socketio: npm ci (node $(node --version), npm $(npm --version))" >&2
npm ci --no-audit --no-fund --loglevel=error >&2
echo "$want" >"$stamp"
