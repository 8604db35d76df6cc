#!/usr/bin/env bash
# `make bench`: installs the load tools if they are missing, then runs the proxy benchmark
# (bench/proxybench.py). Arguments are passed on, e.g. `bash bench/run.sh --quick --only direct,nginx`.
# Idempotent and non-interactive; never starts the system nginx or haproxy service: the benchmark
# runs its own nginx and HAProxy processes with their own configs and stops them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_packages() {
    local created_policy=""
    as_root apt-get update -qq
    # nginx-light where the release still has it (smaller); bookworm only has `nginx`.
    local nginx_package=nginx
    if apt-cache show nginx-light >/dev/null 2>&1; then nginx_package=nginx-light; fi
    local wanted=()
    have nginx || wanted+=("$nginx_package")
    have haproxy || wanted+=(haproxy)
    have wrk || wanted+=(wrk)
    have hey || wanted+=(hey)
    have h2load || wanted+=(nghttp2-client)
    # Debian starts a service when its package is installed unless policy-rc.d says no.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod +x /usr/sbin/policy-rc.d
        created_policy=yes
    fi
    local status=0
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends \
        "${wanted[@]}" >/dev/null || status=$?
    if [ -n "$created_policy" ]; then as_root rm -f /usr/sbin/policy-rc.d; fi
    return "$status"
}

if ! have nginx || ! have haproxy || ! have wrk || ! have hey || ! have h2load; then
    echo "[bench] installing missing load tools (nginx, haproxy, wrk, hey, h2load)" >&2
    install_packages
fi

if [ ! -x .venv/bin/python ]; then
    echo "[bench] .venv/bin/python is missing: run \`make bench\` (it creates .venv first)" >&2
    exit 1
fi

# exec: Ctrl-C and SIGTERM reach the benchmark directly, which stops every server it started.
exec .venv/bin/python -m bench.proxybench "$@"
