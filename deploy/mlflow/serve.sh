#!/usr/bin/env bash
# Shared MLflow tracking server: Postgres backend store, object-store artifacts served through the
# server (clients only need MLFLOW_TRACKING_URI). Needs `pip install psycopg2-binary boto3` next to
# mlflow==3.17.2 (not in the default install). Usage: bash deploy/mlflow/serve.sh [ENV_FILE]
set -euo pipefail
ENV_FILE="${1:-$(dirname "${BASH_SOURCE[0]}")/mlflow.env}"
set -a; source "$ENV_FILE"; set +a
# Upgrade the schema of an existing store to this MLflow version (a no-op when current).
mlflow db upgrade "$MLFLOW_BACKEND_STORE_URI"
exec mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --serve-artifacts --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --host "$MLFLOW_HOST" --port "$MLFLOW_PORT" \
    --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"
