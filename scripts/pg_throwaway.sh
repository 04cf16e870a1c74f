#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and trials: a fresh cluster in DIR, listening on
# 127.0.0.1 only, password authentication over TCP. Prints its URL (with the password).
#
#   url=$(scripts/pg_throwaway.sh start /tmp/pg)     # optional third argument: the port
#   scripts/pg_throwaway.sh stop /tmp/pg
#
# Needs Debian's `postgresql` package (or any initdb/pg_ctl on PATH). PostgreSQL refuses to run
# as root, so as root the cluster belongs to the `postgres` user (runuser).
set -euo pipefail
cmd=${1:?usage: pg_throwaway.sh start|stop DIR [PORT]}
dir=${2:?usage: pg_throwaway.sh start|stop DIR [PORT]}
port=${3:-}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
if [ -z "$bin" ]; then
  command -v initdb >/dev/null || { echo "no PostgreSQL binaries (apt-get install postgresql)" >&2; exit 3; }
  bin=$(dirname "$(command -v initdb)")
fi
as=()
if [ "$(id -u)" = 0 ]; then as=(runuser -u postgres --); fi
case $cmd in
  start)
    mkdir -p "$dir"
    chmod 0755 "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; fi
    if [ -z "$port" ]; then
      port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    fi
    password=$(python3 -c 'import secrets; print(secrets.token_hex(12))')
    echo "$password" > "$dir/pwfile"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir/pwfile"; fi
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U sftbench --pwfile="$dir/pwfile" -E UTF8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1
    rm -f "$dir/pwfile"
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200 -c fsync=off" start >/dev/null
    echo "postgresql://sftbench:$password@127.0.0.1:$port/postgres"
    ;;
  stop)
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
  *)
    echo "usage: pg_throwaway.sh start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
