#!/usr/bin/env bash
# Start a throw-away PostgreSQL server for the SQL tests and hand out its DSN.
#
# Usage:
#   eval "$(bash scripts/start_postgres.sh)"      # exports GENJOBS_TEST_PG_DSN
#                                                 # and GENJOBS_TEST_PG_STARTED (1: this call
#                                                 # started the server, 0: it was running)
#   bash scripts/start_postgres.sh pg.env          # also writes the export lines to pg.env
#   bash scripts/start_postgres.sh --stop          # stops the server (keeps nothing running)
#
# Installs the Debian package "postgresql" with apt-get when no server binaries are found
# (root only), creates a cluster under $GENJOBS_PG_DIR (default /tmp/genjobs-pg) owned by the
# "postgres" user when run as root, listens on 127.0.0.1 (port $GENJOBS_PG_PORT, default 54329,
# or the next free one) with its unix socket in the same folder, trusts local connections and
# creates the database genjobs_test. Running it again reuses a running server.
# Only the export lines go to stdout; progress goes to stderr.
set -euo pipefail

PG_DIR="${GENJOBS_PG_DIR:-/tmp/genjobs-pg}"
PG_PORT="${GENJOBS_PG_PORT:-54329}"
PG_DB="${GENJOBS_PG_DB:-genjobs_test}"
PG_USER=postgres
DATA_DIR="$PG_DIR/data"
PORT_FILE="$PG_DIR/port"
LOG_FILE="$PG_DIR/postgres.log"

log() { echo "start_postgres: $*" >&2; }

find_bin_dir() {
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    local dir
    dir="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    if [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/initdb" ]; then
        echo "$dir"
        return 0
    fi
    return 1
}

install_postgres() {
    if [ "$(id -u)" != 0 ]; then
        log "no PostgreSQL server binaries found and not root: install the 'postgresql' package"
        exit 1
    fi
    log "installing PostgreSQL with apt-get"
    # No default cluster: this script makes its own, and nothing should start on port 5432.
    mkdir -p /etc/postgresql-common
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        postgresql >&2
}

# Runs a command as the cluster owner: "postgres" under root (initdb refuses root), else as is.
as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

emit_env() {
    local port="$1"
    local lines
    lines="export GENJOBS_TEST_PG_DSN=postgresql://$PG_USER@127.0.0.1:$port/$PG_DB"
    lines+=$'\n'"export GENJOBS_TEST_PG_DIR=$PG_DIR"
    lines+=$'\n'"export GENJOBS_TEST_PG_STARTED=$STARTED"
    if [ -n "${OUT_FILE:-}" ]; then
        printf '%s\n' "$lines" >"$OUT_FILE"
    fi
    printf '%s\n' "$lines"
}

OUT_FILE=""
STARTED=0
if [ "${1:-}" = "--stop" ]; then
    if BIN_DIR="$(find_bin_dir)" && [ -f "$DATA_DIR/postmaster.pid" ]; then
        as_owner "$BIN_DIR/pg_ctl" -D "$DATA_DIR" -m fast -w stop >&2 || true
    fi
    exit 0
elif [ -n "${1:-}" ]; then
    OUT_FILE="$1"
fi

BIN_DIR="$(find_bin_dir)" || { install_postgres; BIN_DIR="$(find_bin_dir)"; }
log "using server binaries in $BIN_DIR"

if [ "$(id -u)" = 0 ] && ! id -u "$PG_USER" >/dev/null 2>&1; then
    useradd --system --home-dir "$PG_DIR" --shell /bin/sh "$PG_USER"
fi

mkdir -p "$PG_DIR"
if [ "$(id -u)" = 0 ]; then
    chown "$PG_USER" "$PG_DIR"
fi
chmod 0700 "$PG_DIR"

if [ -f "$PORT_FILE" ] && as_owner "$BIN_DIR/pg_ctl" -D "$DATA_DIR" status >/dev/null 2>&1; then
    PG_PORT="$(cat "$PORT_FILE")"
    log "reusing the server already running on 127.0.0.1:$PG_PORT"
else
    if [ ! -f "$DATA_DIR/PG_VERSION" ]; then
        log "creating a cluster in $DATA_DIR"
        as_owner "$BIN_DIR/initdb" -D "$DATA_DIR" -U "$PG_USER" -A trust -E UTF8 \
            --no-locale --no-sync >&2
    fi
    tries=0
    while port_in_use "$PG_PORT"; do
        tries=$((tries + 1))
        if [ "$tries" -gt 50 ]; then
            log "no free port found near ${GENJOBS_PG_PORT:-54329}"
            exit 1
        fi
        PG_PORT=$((PG_PORT + 1))
    done
    as_owner sh -c "echo $PG_PORT >'$PORT_FILE'"
    log "starting the server on 127.0.0.1:$PG_PORT"
    STARTED=1
    # Durability is not needed for a throw-away test server.
    as_owner "$BIN_DIR/pg_ctl" -D "$DATA_DIR" -l "$LOG_FILE" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c fsync=off \
-c synchronous_commit=off -c full_page_writes=off" start >&2
fi

PSQL=("$BIN_DIR/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d postgres -v ON_ERROR_STOP=1)
if [ "$("${PSQL[@]}" -tAc "select 1 from pg_database where datname = '$PG_DB'")" != 1 ]; then
    log "creating database $PG_DB"
    "${PSQL[@]}" -c "create database $PG_DB" >&2
fi

emit_env "$PG_PORT"
