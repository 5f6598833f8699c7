#!/usr/bin/env bash
# An MLflow tracking server for a shared network, behind MLflow's own authentication:
#     cluster/mlflow_server.sh HOST PORT RUNS_DIR
# runs `mlflow server --app-name basic-auth --host HOST --port PORT` in the foreground (start it with
# `nohup ... &`), its runs in RUNS_DIR/mlflow.db and RUNS_DIR/mlartifacts. cluster.yaml and
# cluster/slurm/sweep.sbatch start it; `mlflow` is the one on PATH (put the project's .venv/bin first).
#
# Secrets, generated once and readable by their owner only (docs/security.md):
#   RUNS_DIR/secrets/mlflow-admin-password    the password of the account `admin`: sign in with it (the UI asks;
#                                             a sweep reads MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)
#   RUNS_DIR/secrets/mlflow-flask-secret-key  the server's session signing key
# The account database is RUNS_DIR/basic_auth.db (password hashes); MLflow creates `admin` on the first start
# only, so changing the password file later changes nothing: rotate it with MLflow's update-password API.
# They reach the server through its environment, never its command line (which every user sees in `ps`).
set -euo pipefail

[ $# -eq 3 ] || { echo "usage: $0 HOST PORT RUNS_DIR" >&2; exit 2; }
HOST=$1
PORT=$2
RUNS=$3
case $HOST in
  0.0.0.0|::|"*"|"")
    echo "$0: error: HOST $HOST would listen on every interface; give the machine's private address" >&2
    exit 2;;
esac

(umask 077 && mkdir -p "$RUNS/secrets")
chmod 700 "$RUNS/secrets"
for secret in mlflow-admin-password mlflow-flask-secret-key; do
  if [ ! -s "$RUNS/secrets/$secret" ]; then
    (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(32))' > "$RUNS/secrets/$secret")
  fi
  chmod 600 "$RUNS/secrets/$secret"
done
# NO_PERMISSIONS: an account the admin adds sees nothing until granted. auth_cache_ttl_seconds: a password
# is checked (scrypt, slow on purpose) once per 5 minutes per account instead of on every request: a sweep
# makes several requests per fold.
(umask 077 && cat > "$RUNS/basic_auth.ini" <<EOF
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$RUNS/basic_auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
auth_cache_ttl_seconds = 300
EOF
)

# MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false: no job runner (seven more Python processes, for MLflow's GenAI jobs,
# which a sweep never submits)
MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
MLFLOW_AUTH_CONFIG_PATH="$RUNS/basic_auth.ini" \
MLFLOW_AUTH_ADMIN_PASSWORD="$(cat "$RUNS/secrets/mlflow-admin-password")" \
MLFLOW_FLASK_SERVER_SECRET_KEY="$(cat "$RUNS/secrets/mlflow-flask-secret-key")" \
  exec mlflow server --app-name basic-auth --host "$HOST" --port "$PORT" --workers 1 \
    --backend-store-uri "sqlite:///$RUNS/mlflow.db" --artifacts-destination "$RUNS/mlartifacts"
