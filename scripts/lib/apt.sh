# shellcheck shell=bash
# Debian packages for the scripts that need programs: sourced by scripts/test.sh,
# scripts/check-deploy.sh, scripts/compose-test.sh and bench/run.sh, which describe each package
# as package:program-it-provides.

# missing_packages NEED...: prints (one a line) the package of each NEED whose program is
# neither on PATH nor in /usr/sbin (where nginx lives, often not on a non-root PATH).
missing_packages() {
  local need
  for need in "$@"; do
    if ! command -v "${need#*:}" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/${need#*:}" ]]; then
      echo "${need%%:*}"
    fi
  done
}

# install_packages PACKAGE...: installs them with apt-get, as root or through sudo; fails when
# neither is possible or apt-get fails.
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

# ensure_packages LABEL NEED...: installs the missing packages of the NEEDs, saying so on
# stdout after LABEL; fails if any is still missing afterwards (the caller names them with
# missing_packages).
ensure_packages() {
  local label=$1 missing
  shift
  # Once each, though several programs may come from one package.
  mapfile -t missing < <(missing_packages "$@" | awk '!seen[$0]++')
  ((${#missing[@]})) || return 0
  echo "${label}installing missing Debian packages: ${missing[*]}"
  install_packages "${missing[@]}" && [[ -z $(missing_packages "$@") ]]
}

# require_packages LABEL NEED...: ensure_packages, or else names the missing packages on stderr
# after LABEL, says how to install them, and exits 1.
require_packages() {
  local label=$1
  ensure_packages "$@" && return 0
  shift
  # Unquoted on purpose: one package name per word, one line.
  # shellcheck disable=SC2046
  echo "${label}missing Debian packages:" $(missing_packages "$@" | awk '!seen[$0]++') >&2
  # shellcheck disable=SC2046
  echo "install them as root: apt-get install" $(missing_packages "$@" | awk '!seen[$0]++') >&2
  exit 1
}
