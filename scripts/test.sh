#!/usr/bin/env bash
# The README's test command: installs what the tests need (OpenSSH server for the real-sshd test
# fleet, chromium for the browser tests, Debian's PostgreSQL server, the package with its test
# extras), then lints and runs the whole suite on SQLite, then a subset on a real PostgreSQL
# (tests/pg_server.py starts a throwaway cluster; EDGEFLEET_TEST_POSTGRESQL=0 skips that run).
# lint-imports checks the import contracts in pyproject.toml. As root, tests/arm (two emulated
# arm64 Raspberry Pi OS userlands, bookworm and bullseye, under qemu-user) runs last, after the
# PostgreSQL run, on rootfs built in the background meanwhile (qemu-user-static, binfmt-support
# and debootstrap are installed here).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
if [ ! -x /usr/sbin/sshd ] || ! command -v ssh-keygen >/dev/null || ! command -v scp >/dev/null; then
  packages+=(openssh-server openssh-client)
fi
# Browser tests (tests/browser) drive Debian's chromium with Playwright; Playwright's own browser
# downloads are never used.
[ -x /usr/bin/chromium ] || packages+=(chromium)
# The PostgreSQL run (issue 14): initdb/pg_ctl of Debian's server, run as the postgres user.
compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null || packages+=(postgresql)
# The emulated arm64 Pis (tests/arm, issue 16): qemu-user through binfmt_misc, debootstrap.
if [ ! -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P ] && [ ! -x /usr/bin/qemu-aarch64-static ]; then
  packages+=(qemu-user-static binfmt-support)
fi
command -v debootstrap >/dev/null || packages+=(debootstrap)
# A device whose sh is busybox ash (tests/unit/transport/test_transport_quoting.py).
command -v busybox >/dev/null || packages+=(busybox)
# A device rebooting under a persistent SSH connection (tests/fleet/test_device_reboot.py):
# its sshd in a network namespace behind a veth pair.
command -v ip >/dev/null || packages+=(iproute2)
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}"
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'

# aarch64 binaries run through binfmt_misc: mount it if the machine has not, register qemu's
# entry. The tests need root (namespaces, overlay, chroot); as root they must run, not skip.
arm_build=""
if [ "$(id -u)" = 0 ]; then
  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
  export EDGEFLEET_ARM_REQUIRED=1
  if [ $# -eq 0 ]; then
    # Build both rootfs (cached in $EDGEFLEET_ARM_CACHE, default /var/cache/edgefleet-arm) while
    # the rest of the suite runs; tests/arm waits for it on the cache's lock.
    arm_log="${TMPDIR:-/tmp}/edgefleet-arm-build.log"
    python3 -m tests.arm.rootfs >"$arm_log" 2>&1 &
    arm_build=$!
  fi
else
  echo "not root: the emulated arm64 devices (tests/arm) will be skipped" >&2
fi

ruff check .
lint-imports
if [ $# -eq 0 ]; then
  python3 -m pytest -q --ignore=tests/arm
else
  python3 -m pytest -q "$@"
fi

# The PostgreSQL run: the subset the README's "PostgreSQL" section names (migrations, the lock,
# jobs, leases, schedules, pages, the API, push and bench end to end over sshd, several workers
# on procrastinate and one of them killed); each test gets
# a fresh database on one throwaway server. Only when no arguments chose tests for the run above.
if [ $# -eq 0 ] && [ "${EDGEFLEET_TEST_POSTGRESQL:-1}" != 0 ]; then
  EDGEFLEET_TEST_DATABASE=postgresql python3 -m pytest -q \
    tests/unit/core tests/unit/jobs tests/unit/cli/test_cli.py \
    tests/unit/web/test_pages.py tests/unit/web/test_pages_more.py tests/unit/web/test_api.py \
    tests/fleet/test_push_e2e.py tests/fleet/test_bench.py \
    tests/fleet/test_telemetry_and_leases.py tests/fleet/test_cli_jobs.py \
    tests/fleet/test_busy_device_waits.py \
    tests/faults/test_lease_holder_dies.py tests/faults/test_killed_server_mid_bench.py \
    tests/faults/test_killed_cli_push.py tests/faults/test_worker_host_dies.py \
    tests/faults/test_facts_race.py tests/faults/test_killed_scheduler.py \
    tests/faults/test_same_hostname_other_host.py tests/faults/test_killed_alert.py \
    tests/faults/test_clock_skew.py \
    tests/unit/transport/test_hostkeys.py tests/fleet/test_shared_state.py \
    tests/fleet/test_shared_state_s3.py
fi

# The emulated arm64 Pis last: the rootfs build started above has had the whole run to finish.
if [ $# -eq 0 ]; then
  if [ -n "$arm_build" ] && ! wait "$arm_build"; then
    echo "building the arm64 rootfs failed; its log: $arm_log" >&2
    tail -n 40 "$arm_log" >&2
    exit 1
  fi
  time python3 -m pytest -q tests/arm
fi
