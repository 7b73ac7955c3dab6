#!/usr/bin/env bash
# Installs what the real-sshd test lab (tests/integration/lab.rs) needs:
# OpenSSH server + client and git; prometheus + promtool for the
# dashboard tests (tests/integration/prom.rs); shellcheck for the shell lint
# (tests/integration/shellcheck_tests.rs); busybox for the host script tests
# (src/host/script/tests/ runs them under dash and, when present, busybox sh);
# systemd for `systemd-analyze verify` of contrib/systemd/.
# Idempotent; quiet when nothing is missing.
# Never starts the system sshd or prometheus services: the tests run their own.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

apt_updated=0
# Runs a command with its output captured; shows the output only on failure.
quiet() {
    local log
    log=$(mktemp)
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "install-test-deps: failed: $*" >&2
        exit 1
    fi
    rm -f "$log"
}
apt_install() {
    # $@: Debian package names
    if [ "$apt_updated" -eq 0 ]; then
        quiet $SUDO apt-get update
        apt_updated=1
    fi
    quiet $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y \
        --no-install-recommends "$@"
    echo "install-test-deps: installed $*"
}

need_ssh=0
[ -x /usr/sbin/sshd ] || need_ssh=1
command -v ssh >/dev/null 2>&1 || need_ssh=1
command -v ssh-keygen >/dev/null 2>&1 || need_ssh=1

# Runs "$@" (an apt_install) without letting the packages' maintainer scripts
# start their services: invoke-rc.d (and deb-systemd-invoke) consult
# /usr/sbin/policy-rc.d, and exit code 101 means "action forbidden". Only
# installs our policy file if none exists, and always removes it again
# afterwards.
without_service_starts() {
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
        $SUDO chmod 755 "$policy"
        own_policy=1
    fi
    cleanup_policy() {
        if [ "$own_policy" -eq 1 ]; then
            $SUDO rm -f "$policy"
        fi
    }
    trap cleanup_policy EXIT
    "$@"
    cleanup_policy
    own_policy=0
    trap - EXIT
}

if [ "$need_ssh" -eq 1 ]; then
    # The lab runs its own sshd processes: never start the system service.
    without_service_starts apt_install openssh-server openssh-client
fi

if ! command -v git >/dev/null 2>&1; then
    apt_install git
fi

# Every shell file (src/host/sh/*.sh, scripts/, demo bin/) must pass shellcheck.
if ! command -v shellcheck >/dev/null 2>&1; then
    apt_install shellcheck
fi

# The host script unit tests run every script under busybox sh as well as dash.
if ! command -v busybox >/dev/null 2>&1; then
    apt_install busybox
fi

# Prometheus and promtool for the dashboard and alert tests
# (tests/integration/prom.rs, dashboard_tests.rs). The tests run their own
# prometheus processes on free ports with temporary storage: the system
# prometheus service is neither started here nor needed (nor disturbed if it
# already runs).
if [ ! -x /usr/bin/prometheus ] || [ ! -x /usr/bin/promtool ]; then
    without_service_starts apt_install prometheus
fi

# systemd-analyze verifies the units of contrib/systemd/
# (tests/integration/systemd_tests.rs). Only the package: nothing is started.
if ! command -v systemd-analyze >/dev/null 2>&1; then
    without_service_starts apt_install systemd
fi

# sshd refuses to start without its privilege-separation directory; /run is
# a tmpfs on most systems, so create it every time (the lab does it as well).
$SUDO mkdir -p /run/sshd
$SUDO chmod 755 /run/sshd
