#!/usr/bin/env bash
# Make sure the local PostgreSQL and Redis answer; start them if they are installed but stopped.
# (The Kafka-protocol broker is not started here: `couponrush dev` and the tests start their own.)
set -euo pipefail

wait_for() {  # wait_for <what> <command...>: poll until the command succeeds, at most 30 s
    local what=$1; shift
    for _ in $(seq 1 150); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "$what did not come up" >&2
    return 1
}

# Without a local PostgreSQL/Redis installation, `couponrush dev` starts embedded ones (from the
# `embedded` extra's wheels) when COUPONRUSH_DATABASE_URL / COUPONRUSH_REDIS_URL are unset.
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v pg_isready >/dev/null 2>&1; then
    echo "no local PostgreSQL installation: couponrush dev will start an embedded one"
elif ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
    wait_for PostgreSQL pg_isready -h 127.0.0.1 -p 5432 -q
fi

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "no local Redis installation: couponrush dev will start an embedded one"
elif ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    echo "Redis is not answering on 127.0.0.1:6379; starting it"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    wait_for Redis sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'
fi
echo "services checked"
