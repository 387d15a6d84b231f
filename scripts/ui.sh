#!/usr/bin/env bash
# `make ui`: the Dagster UI with its daemon (sensors, schedules, run queue) and the MLflow UI, both on
# loopback only. Ctrl-C (or SIGTERM) stops both, and everything they started, before the script exits.
#
# Environment: DAGSTER_HOME (default .dagster_home/), DAGSTER_PORT (3000), MLFLOW_PORT (5000),
# MLFLOW_TRACKING_URI (default sqlite:///mlflow/mlflow.db; an http(s) URI means a remote MLflow
# server, so no local MLflow UI is started), MLFLOW_ARTIFACT_ROOT (default mlflow/artifacts/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BIN="$ROOT/.venv/bin"
HOST=127.0.0.1
DAGSTER_PORT="${DAGSTER_PORT:-3000}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
STOP_GRACE_S="${UI_STOP_GRACE_S:-30}"  # graceful shutdown takes ~20 s on a busy 2-core machine
export DAGSTER_HOME="${DAGSTER_HOME:-$ROOT/.dagster_home}"
MLFLOW_BACKEND="${MLFLOW_TRACKING_URI:-sqlite:///$ROOT/mlflow/mlflow.db}"
MLFLOW_ARTIFACTS="${MLFLOW_ARTIFACT_ROOT:-$ROOT/mlflow/artifacts}"

for tool in dagster mlflow; do
    [[ -x "$BIN/$tool" ]] || { echo "ui.sh: $BIN/$tool not found; run 'make install' first" >&2; exit 2; }
done
mkdir -p "$DAGSTER_HOME" "$ROOT/mlflow/artifacts"

# Job control: every background server gets its own process group, so one signal to the group
# reaches the server and all its children, and a terminal Ctrl-C reaches only this script.
set -m
groups=()

stop_all() {
    trap 'force=1' INT TERM  # a second Ctrl-C skips the graceful wait
    trap - EXIT
    force=0
    echo
    echo "ui.sh: stopping Dagster and MLflow (up to ${STOP_GRACE_S}s; Ctrl-C again to force) ..."
    local pgid alive
    for pgid in "${groups[@]}"; do kill -TERM -- "-$pgid" 2>/dev/null || true; done
    for _ in $(seq 1 $((STOP_GRACE_S * 10))); do
        alive=0
        for pgid in "${groups[@]}"; do kill -0 -- "-$pgid" 2>/dev/null && alive=1; done
        ((alive && !force)) || break
        sleep 0.1
    done
    for pgid in "${groups[@]}"; do kill -KILL -- "-$pgid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "ui.sh: stopped."
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all' EXIT

"$BIN/dagster" dev -w "$ROOT/workspace.yaml" -h "$HOST" -p "$DAGSTER_PORT" </dev/null &
groups+=("$!")

if [[ "$MLFLOW_BACKEND" =~ ^https?:// ]]; then
    mlflow_url="$MLFLOW_BACKEND (remote tracking server; no local MLflow UI started)"
else
    "$BIN/mlflow" ui --backend-store-uri "$MLFLOW_BACKEND" --default-artifact-root "$MLFLOW_ARTIFACTS" \
        -h "$HOST" -p "$MLFLOW_PORT" </dev/null &
    groups+=("$!")
    mlflow_url="http://$HOST:$MLFLOW_PORT"
fi

cat <<EOF

  Dagster UI (+ daemon): http://$HOST:$DAGSTER_PORT   (DAGSTER_HOME=$DAGSTER_HOME)
  MLflow UI:             $mlflow_url
  Ctrl-C stops both.

EOF

# Return as soon as either server exits (a port already in use, say), then stop the other one.
wait -n || status=$?
echo "ui.sh: a server exited (status ${status:-0}); stopping the other." >&2
exit "${status:-1}"
