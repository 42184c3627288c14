#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback for the store and crash tests (nothing listens beyond 127.0.0.1).
#   eval "$(bash scripts/postgres.sh start [DIR])"   # prints: export DLCLINIC_TEST_POSTGRES=postgresql://...
#   bash scripts/postgres.sh stop [DIR]               # stops it and deletes DIR
# DIR defaults to $TMPDIR/dlclinic-pg. initdb refuses to run as root: as root the cluster runs as $PG_USER
# (default postgres, else nobody) through runuser. PG_BIN names the folder of initdb/pg_ctl when they are not on PATH.
# Progress goes to stderr; stdout carries only the export line, so `eval` is safe. Starting twice reuses the cluster.
set -euo pipefail
ACTION="${1:-start}"
DIR="${2:-${TMPDIR:-/tmp}/dlclinic-pg}"
if [ -z "${PG_BIN:-}" ]; then
  if command -v initdb >/dev/null 2>&1; then PG_BIN="$(dirname "$(readlink -f "$(command -v initdb)")")"
  else PG_BIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1)")"; fi
fi
[ -x "$PG_BIN/initdb" ] || { echo "postgres.sh: expected initdb on PATH or under /usr/lib/postgresql/*/bin, found none (set PG_BIN)" >&2; exit 2; }
AS=()
if [ "$(id -u)" = 0 ]; then
  PG_USER="${PG_USER:-$(id -u postgres >/dev/null 2>&1 && echo postgres || echo nobody)}"
  AS=(runuser -u "$PG_USER" --)
fi
run() { "${AS[@]}" "$@"; }

case "$ACTION" in
  start)
    mkdir -p "$DIR"
    [ ${#AS[@]} -eq 0 ] || chown "$PG_USER" "$DIR"
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
      echo "==> initdb $DIR/data" >&2
      run "$PG_BIN/initdb" -D "$DIR/data" -A trust -U dlclinic --no-sync >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; exit 1; }
    fi
    if ! run "$PG_BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
      PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
      echo "$PORT" >"$DIR/port"
      echo "==> pg_ctl start on 127.0.0.1:$PORT" >&2
      run "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $PORT -k $DIR -c fsync=on" start >&2
      run "$PG_BIN/createdb" -h 127.0.0.1 -p "$PORT" -U dlclinic dlclinic_test >&2 || true
    fi
    echo "export DLCLINIC_TEST_POSTGRES=postgresql://dlclinic@127.0.0.1:$(cat "$DIR/port")/dlclinic_test"
    ;;
  stop)
    if [ -d "$DIR/data" ]; then run "$PG_BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >&2 || true; fi
    rm -rf "$DIR"
    ;;
  *)
    echo "postgres.sh: expected start or stop, found '$ACTION'" >&2
    exit 2
    ;;
esac
