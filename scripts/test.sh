#!/usr/bin/env bash
# The README's test command: installs what the tests need (OpenSSH server for the real-sshd test
# fleet, the package with its test extras), then lints and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null || ! command -v scp >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
ruff check .
python3 -m pytest -q "$@"
