#!/usr/bin/env bash
# The README's test command: installs what the tests need (OpenSSH server for the real-sshd test
# fleet, chromium for the browser tests, the package with its test extras), then lints and runs
# the whole suite. lint-imports checks the import contracts in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null || ! command -v scp >/dev/null; then
  packages+=(openssh-server openssh-client)
fi
# Browser tests (tests/browser) drive Debian's chromium with Playwright; Playwright's own browser
# downloads are never used.
[ -x /usr/bin/chromium ] || packages+=(chromium)
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
ruff check .
lint-imports
python3 -m pytest -q "$@"
