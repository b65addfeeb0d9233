#!/usr/bin/env bash
# A throwaway PostgreSQL for the cluster tests: Debian's postgresql package, a cluster in a temp folder owned by a
# non-root user (PostgreSQL refuses to run as root), on a free local port, trust auth on 127.0.0.1 only.
#   .ci/pg-cluster.sh start DIR     -> prints the URL (postgres://sdlora@127.0.0.1:PORT/sdlora)
#   .ci/pg-cluster.sh restart DIR   -> stops and starts it again (the tests use this to cut connections mid-run)
#   .ci/pg-cluster.sh stop DIR      -> stops it and removes DIR
set -euo pipefail
cmd=${1:?start|restart|stop}; dir=${2:?folder}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bin" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql) >/dev/null 2>&1 || true
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  fi
  [ -n "$bin" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 3; }
fi
# Run as the postgres user when we are root; as ourselves otherwise.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    runuser -u postgres -- "$@"
  else "$@"; fi
}
case "$cmd" in
  start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && { id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres; chown postgres "$dir"; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    as_pg "$bin/initdb" -D "$dir/db" -U postgres --auth=trust -E UTF8 >/dev/null
    echo "$port" >"$dir/port"
    as_pg "$bin/pg_ctl" -D "$dir/db" -l "$dir/db/server.log" -w -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -q -c "CREATE USER sdlora" -c "CREATE DATABASE sdlora OWNER sdlora" >/dev/null
    echo "postgres://sdlora@127.0.0.1:$port/sdlora"
    ;;
  restart)
    port=$(cat "$dir/port")
    as_pg "$bin/pg_ctl" -D "$dir/db" -m fast -w stop >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/db" -l "$dir/db/server.log" -w -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    ;;
  stop)
    [ -d "$dir/db" ] && as_pg "$bin/pg_ctl" -D "$dir/db" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start|restart|stop DIR" >&2; exit 2 ;;
esac
