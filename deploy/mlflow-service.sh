#!/usr/bin/env bash
# MLflow's tracking server on the cluster's head (cluster.yaml's head_start_ray_commands run this).
# Backend: the database URI in ~/.switchsweep/mlflow-db (PostgreSQL; the head's setup writes it from SSM,
# deploy/aws/mlflow_db.py), or SQLite on the head's own disk when that file is empty. Artifacts: the
# bucket. It listens on the head's private address, where the GPU nodes log to it.
# Where systemd runs (the cluster's images), a unit that starts it at boot and again if it exits; elsewhere
# a process of its own, which `ray up` (these start commands) starts again. The URI, password included,
# stays out of command lines and logs: it reaches the server through its environment.
# The server takes a login (MLflow's basic-auth app): one user, made once per head with a random password
# kept in ~/.switchsweep/mlflow-login (mode 600); `mlflow-service.sh login` prints it as the environment
# that clients log in with (the head's setup adds it to ~/switchsweep.env: sweep drivers and their trials).
set -euo pipefail
LOGIN=~/.switchsweep/mlflow-login
random() { head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32; }
if [ ! -s "$LOGIN" ]; then
  # the login, and the key MLflow signs its forms' CSRF tokens with
  (umask 077 && mkdir -p ~/.switchsweep && printf 'switchsweep:%s:%s\n' "$(random)" "$(random)" > "$LOGIN")
fi
IFS=: read -r USER_NAME PASSWORD SECRET_KEY < "$LOGIN"
if [ "${1:-}" = "login" ]; then
  printf 'export MLFLOW_TRACKING_USERNAME=%s\nexport MLFLOW_TRACKING_PASSWORD=%s\n' "$USER_NAME" "$PASSWORD"
  exit 0
fi
. ~/switchsweep.env
HOST=$(hostname -I | awk '{print $1}')
MLFLOW="$HOME/switchsweep/.venv/bin/mlflow"
ARGS=(server --host "$HOST" --port 5000 --artifacts-destination "$SWITCHSWEEP_STORAGE/mlflow" --serve-artifacts
  --app-name basic-auth)
DB=$(cat ~/.switchsweep/mlflow-db 2>/dev/null || true)
URI=${DB:-sqlite:///$HOME/mlflow.db}

umask 077
mkdir -p ~/.switchsweep
cat > ~/.switchsweep/mlflow-auth.ini <<INI
[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///$HOME/.switchsweep/mlflow-auth.db
admin_username = $USER_NAME
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
# Without MLflow's GenAI job runner (eight processes that do nothing for a sweep's runs).
printf '%s\n' "MLFLOW_BACKEND_STORE_URI=$URI" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false \
  "MLFLOW_AUTH_CONFIG_PATH=$HOME/.switchsweep/mlflow-auth.ini" "MLFLOW_AUTH_ADMIN_PASSWORD=$PASSWORD" \
  "MLFLOW_FLASK_SERVER_SECRET_KEY=$SECRET_KEY" > ~/.switchsweep/mlflow.env
cat > ~/.switchsweep/switchsweep-mlflow.service <<EOF
[Unit]
Description=MLflow tracking server of the switchsweep cluster
Wants=network-online.target
After=network-online.target

[Service]
User=$(id -un)
EnvironmentFile=$HOME/.switchsweep/mlflow.env
ExecStart=$MLFLOW ${ARGS[*]}
Restart=always
RestartSec=5
StandardOutput=append:$HOME/mlflow.log
StandardError=append:$HOME/mlflow.log

[Install]
WantedBy=multi-user.target
EOF

if [ -d /run/systemd/system ]; then
  S=$(command -v sudo || true)
  $S cp ~/.switchsweep/switchsweep-mlflow.service /etc/systemd/system/
  $S systemctl daemon-reload
  $S systemctl enable --quiet switchsweep-mlflow
  $S systemctl restart switchsweep-mlflow
else
  # The server this script started last, if it still runs (a pid a reboot handed to another program is not it).
  PID=$(cat ~/.switchsweep/mlflow.pid 2>/dev/null || true)
  if [ -n "$PID" ] && tr '\0' ' ' < "/proc/$PID/cmdline" 2>/dev/null | grep -q "mlflow server"; then
    kill "$PID"
    for _ in $(seq 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.2; done
  fi
  MLFLOW_BACKEND_STORE_URI="$URI" MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false MLFLOW_AUTH_ADMIN_PASSWORD="$PASSWORD" \
    MLFLOW_AUTH_CONFIG_PATH="$HOME/.switchsweep/mlflow-auth.ini" MLFLOW_FLASK_SERVER_SECRET_KEY="$SECRET_KEY" \
    nohup "$MLFLOW" "${ARGS[@]}" > ~/mlflow.log 2>&1 < /dev/null &
  echo $! > ~/.switchsweep/mlflow.pid
fi
