# Sourced by the scripts: installs the Debian packages named by "command:package" pairs
# whose command is missing (a "glob:package" pair checks that a path matching the glob
# exists instead). Runs apt-get update once, only when something is missing.
ensure_packages() {
  local missing=() pair check package
  for pair in "$@"; do
    check=${pair%%:*}
    package=${pair#*:}
    if [[ $check == /* ]]; then
      compgen -G "$check" >/dev/null || missing+=("$package")
    else
      command -v "$check" >/dev/null 2>&1 || missing+=("$package")
    fi
  done
  ((${#missing[@]})) || return 0
  echo "==> installing ${missing[*]}"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Installs the PyPI packages named by "command:requirement" pairs whose command is
# missing (e.g. "moto_server:moto[server]"), with the machine's python3 -m pip, and
# makes the command findable: pyenv's shims are refreshed, and when the command is still
# not on PATH, python's scripts directory is added to it.
ensure_python_packages() {
  local missing=() pair check requirement
  for pair in "$@"; do
    check=${pair%%:*}
    requirement=${pair#*:}
    command -v "$check" >/dev/null 2>&1 || missing+=("$requirement")
  done
  if ((${#missing[@]})); then
    echo "==> installing ${missing[*]} (pip)"
    command -v python3 >/dev/null 2>&1 || ensure_packages python3:python3 pip3:python3-pip
    local user=""
    [ "$(id -u)" = 0 ] || [ -n "${VIRTUAL_ENV:-}" ] || user="--user"
    python3 -m pip install -q $user "${missing[@]}" ||
      python3 -m pip install -q $user --break-system-packages "${missing[@]}"
    command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
  fi
  for pair in "$@"; do
    check=${pair%%:*}
    if ! command -v "$check" >/dev/null 2>&1; then
      local dir
      for dir in "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
        "$(python3 -m site --user-base 2>/dev/null)/bin"; do
        if [ -x "$dir/$check" ]; then
          export PATH="$dir:$PATH"
          break
        fi
      done
    fi
    command -v "$check" >/dev/null 2>&1 || {
      echo "error: $check is still missing after installing it" >&2
      return 1
    }
  done
}
