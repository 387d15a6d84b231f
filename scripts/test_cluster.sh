#!/usr/bin/env bash
# `make test-cluster`: the ingestion and the model registry run "for real" on this machine, the way a
# cluster runs them: a PostgreSQL server behind the Dagster instance (runs, event logs, schedules)
# and behind MLflow; dagster-daemon dequeuing one `ingest_new_scans` run per occupied hash bucket at
# once (QueuedRunCoordinator, DefaultRunLauncher); their tables compared with a single-process
# ingestion of the same folder.
# The checks themselves are in scripts/cluster_check.py; this script owns the processes and the
# temporary folder, and always stops and removes them (trap), on success, failure or Ctrl-C.
#
# Needs: PostgreSQL 15 server binaries (initdb, pg_ctl, postgres on PATH, e.g. Debian's
# postgresql-15) and `pip install -e '.[dev,cluster]'` (dagster-postgres, psycopg2).
# Run as root, the server runs as the `postgres` user (else `nobody`): PostgreSQL refuses root.
#
# Environment knobs: CLUSTER_N_SCANS (12), CLUSTER_TIMEOUT (900 s for the runs), CLUSTER_KEEP=1 (keep
# the temporary folder, to look after a failure).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
PY=$VENV_BIN/python

log() { printf '[test-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '[test-cluster] ERROR: %s\n' "$*" >&2; exit 1; }

for tool in initdb pg_ctl postgres; do
    command -v "$tool" >/dev/null || die "$tool not found on PATH: install the PostgreSQL 15 server (Debian: postgresql-15)"
done
"$PY" -c 'import dagster_postgres, psycopg2' 2>/dev/null \
    || die "dagster-postgres / psycopg2 missing in $VENV_BIN: pip install -c requirements.lock -e '.[dev,cluster]'"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cmr-cluster.XXXXXX")
chmod 755 "$WORK"  # the server's user must reach its data folder below
PGROOT=$WORK/postgres
DAEMON_PID=""
PG_STARTED=""
STATUS=1

# Run the server's commands as a user PostgreSQL accepts.
PG_AS=()
if [[ $(id -u) == 0 ]]; then
    PG_USER=postgres
    id "$PG_USER" >/dev/null 2>&1 || PG_USER=nobody
    PG_AS=(runuser -u "$PG_USER" --)
fi

stop_daemon() {
    [[ -n $DAEMON_PID ]] || return 0
    if kill -0 "$DAEMON_PID" 2>/dev/null; then
        log "stopping dagster-daemon (process group $DAEMON_PID)"
        kill -TERM -- "-$DAEMON_PID" 2>/dev/null || true
        for _ in $(seq 1 40); do
            kill -0 -- "-$DAEMON_PID" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 -- "-$DAEMON_PID" 2>/dev/null; then
            log "dagster-daemon still there after 20 s: KILL"
            kill -KILL -- "-$DAEMON_PID" 2>/dev/null || true
        fi
    fi
    wait "$DAEMON_PID" 2>/dev/null || true
    DAEMON_PID=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ $STATUS == 0 || $rc != 0 ]] || rc=1
    if [[ $rc != 0 ]]; then
        for file in "$WORK/daemon.log" "$PGROOT/server.log"; do
            [[ -s $file ]] && { echo "---- last lines of $file ----" >&2; tail -n 40 "$file" >&2; }
        done
    fi
    stop_daemon
    if [[ -n $PG_STARTED ]]; then
        log "stopping PostgreSQL"
        "${PG_AS[@]}" pg_ctl -D "$PGROOT/data" -m fast -w -t 30 stop >/dev/null 2>&1 \
            || "${PG_AS[@]}" pg_ctl -D "$PGROOT/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [[ ${CLUSTER_KEEP:-0} == 1 ]]; then
        log "kept $WORK (CLUSTER_KEEP=1)"
    else
        rm -rf "$WORK"
    fi
    if [[ $rc == 0 ]]; then log "passed"; else log "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# 1. PostgreSQL: a fresh cluster on a free port, 127.0.0.1 only, a random password, socket in the folder.
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$PGROOT"
[[ ${#PG_AS[@]} == 0 ]] || chown "$PG_USER" "$PGROOT"
PG_PASSWORD=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
printf '%s\n' "$PG_PASSWORD" >"$PGROOT/pwfile"
[[ ${#PG_AS[@]} == 0 ]] || chown "$PG_USER" "$PGROOT/pwfile"
"${PG_AS[@]}" initdb -D "$PGROOT/data" -U cmr --pwfile="$PGROOT/pwfile" --auth=scram-sha-256 -E UTF8 --no-sync \
    >"$PGROOT/initdb.log" 2>&1 || { cat "$PGROOT/initdb.log" >&2; die "initdb failed"; }
rm -f "$PGROOT/pwfile"
PG_STARTED=1
"${PG_AS[@]}" pg_ctl -D "$PGROOT/data" -l "$PGROOT/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$PORT -c unix_socket_directories=$PGROOT -c fsync=off -c max_connections=200" \
    start >/dev/null || die "PostgreSQL did not start"
# SQLAlchemy 2.1 reads a plain postgresql:// URL as psycopg 3; the extra `cluster` installs psycopg2.
LIBPQ_URL=postgresql://cmr:$PG_PASSWORD@127.0.0.1:$PORT
PG_URL=postgresql+psycopg2://cmr:$PG_PASSWORD@127.0.0.1:$PORT
"$PY" - "$LIBPQ_URL/postgres" <<'EOF'
import sys

import psycopg2

connection = psycopg2.connect(sys.argv[1])
connection.autocommit = True
with connection.cursor() as cursor:
    for name in ("dagster", "mlflow"):
        cursor.execute(f"CREATE DATABASE {name}")
connection.close()
EOF
log "PostgreSQL $(postgres --version | awk '{print $3}') on 127.0.0.1:$PORT (databases dagster, mlflow), data in $PGROOT"

# 2. The Dagster instance, the data folder and MLflow, all under $WORK.
export DAGSTER_HOME=$WORK/dagster_home
mkdir -p "$DAGSTER_HOME"
cp deploy/cluster-test/dagster.yaml "$DAGSTER_HOME/dagster.yaml"
export DAGSTER_PG_HOST=127.0.0.1 DAGSTER_PG_PORT=$PORT DAGSTER_PG_DB=dagster DAGSTER_PG_USER=cmr
export DAGSTER_PG_PASSWORD=$PG_PASSWORD
export CMR_DATA_DIR=$WORK/cluster-data
export MLFLOW_TRACKING_URI=$PG_URL/mlflow
export MLFLOW_ARTIFACT_ROOT=file://$WORK/mlflow-artifacts
export PATH=$VENV_BIN:$PATH
mkdir -p "$CMR_DATA_DIR"

"$PY" scripts/cluster_check.py pause-automation

# 3. dagster-daemon in the background, in its own process group (job control on: it gets SIGINT and
# SIGTERM like any process, and stop_daemon signals the whole group: code server and run workers too).
DAEMON_SINCE=$(date +%s)
set -m
dagster-daemon run -w workspace.yaml >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
set +m
log "dagster-daemon started (pid $DAEMON_PID), log $WORK/daemon.log"

# 4. The checks: concurrent partition runs vs one process, then MLflow on PostgreSQL.
"$PY" scripts/cluster_check.py check --work "$WORK" --daemon-since "$DAEMON_SINCE" \
    --n-scans "${CLUSTER_N_SCANS:-12}" --timeout "${CLUSTER_TIMEOUT:-900}"
STATUS=0
