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
