#!/usr/bin/env bash
# Creates the project-local Python venv (.venv, git-ignored) that the interop tests use to run the
# real Django Channels stack (channels, channels_redis, daphne), and keeps it in step with
# tests/python/requirements.txt.
#
# The venv is created with python3 when it is missing or broken, and the requirements are installed
# from the package index pip is configured with unless the stamp left by the last successful
# install holds their sha256. When the requirements changed, the venv is rebuilt so that it holds
# exactly the pinned set. Nothing is printed when the venv is already up to date.
# On any failure it says what failed and exits non-zero.
#
# Usage: scripts/python-venv.sh   (scripts/test.sh calls it; it takes no arguments)
set -euo pipefail

cd "$(dirname "$0")/.."

venv=.venv
requirements=tests/python/requirements.txt
stamp=$venv/.requirements.sha256

fail() {
  echo "python-venv: $*" >&2
  exit 1
}

[[ -f $requirements ]] || fail "$requirements not found"

# Serialise concurrent runs (two test processes bootstrapping at once) on this script's own file,
# which always exists and, unlike a lock inside .venv, survives the venv being recreated.
if command -v flock >/dev/null 2>&1; then
  exec 9<"$0"
  flock 9
fi

want=$(sha256sum "$requirements" | cut -d' ' -f1)

# A venv whose interpreter no longer runs (for example after python3 was upgraded or moved) is
# rebuilt from scratch rather than patched. So is one installed from an older requirements file:
# starting empty is the simple way to drop the packages that the new file no longer lists.
if [[ -e $venv ]] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
  echo "python-venv: $venv is broken (its python does not run); recreating it"
  rm -rf "$venv"
elif [[ -f $stamp && $(<"$stamp") != "$want" ]]; then
  echo "python-venv: $requirements changed; recreating $venv"
  rm -rf "$venv"
fi

if [[ ! -e $venv ]]; then
  command -v python3 >/dev/null 2>&1 ||
    fail "python3 not found on PATH: install the Debian packages python3 and python3-venv"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    fail "python3 is $(python3 -V 2>&1); Django 5.2 needs Python 3.10 or newer"
  echo "python-venv: creating $venv with $(python3 -V 2>&1)"
  if ! python3 -m venv "$venv"; then
    rm -rf "$venv"
    fail "python3 -m venv failed: install the Debian package python3-venv"
  fi
fi

if [[ -f $stamp && $(<"$stamp") == "$want" ]]; then
  exit 0
fi

echo "python-venv: installing $requirements into $venv"
rm -f "$stamp"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
  --progress-bar off -r "$requirements" ||
  fail "pip install -r $requirements failed (see the pip output above)"
"$venv/bin/python" -m pip check --disable-pip-version-check >/dev/null ||
  fail "installed packages are inconsistent: run $venv/bin/python -m pip check"
echo "$want" >"$stamp"
echo "python-venv: $venv is up to date"
