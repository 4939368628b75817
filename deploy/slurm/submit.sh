#!/usr/bin/env bash
# `make slurm-sweep`: check what a sweep on Slurm needs, on the login node and before any allocation, then
# submit deploy/slurm/sweep.sbatch with sbatch. Each failed check is one line naming the setting to fix.
#   NODES (2), GPUS_PER_NODE (0), PARTITION (the default one), TIME (04:00:00): the allocation
#   SWITCHSWEEP_SHARED (required), SWITCHSWEEP_TRACKING_URI (optional): as in sweep.sbatch
#   SBATCH_ARGS: more sbatch options (e.g. --account=lab --dependency=afterany:123)
#   the arguments: the sweep's (sweep=table1 model.size=S, --resume, ...)
set -uo pipefail
cd "$(dirname "$0")/../.."
say() { echo "slurm-sweep: $*" >&2; exit 2; }
NODES=${NODES:-2}
GPUS=${GPUS_PER_NODE:-0}
TIME=${TIME:-04:00:00}
PARTITION=${PARTITION:-}
BIN=$PWD/.venv/bin

command -v sbatch >/dev/null || say "sbatch is not on PATH: run this on the cluster's login node"
[[ $NODES =~ ^[1-9][0-9]*$ ]] || say "NODES=$NODES is not a number of nodes, e.g. NODES=4"
[[ $GPUS =~ ^[0-9]+$ ]] || say "GPUS_PER_NODE=$GPUS is not a number of GPUs, e.g. GPUS_PER_NODE=8"
SHARED=${SWITCHSWEEP_SHARED:-}
[ -n "$SHARED" ] || say "SWITCHSWEEP_SHARED is unset: give a folder every node mounts (a home or project file system)"
[[ $SHARED = /* ]] || say "SWITCHSWEEP_SHARED=$SHARED is not an absolute path: give the folder as every node sees it"
[ -d "$SHARED" ] && [ -w "$SHARED" ] || say "SWITCHSWEEP_SHARED=$SHARED is not a writable folder here: create it"

where=(-h)
[ -n "$PARTITION" ] && where+=(-p "$PARTITION")
nodes_there=$(sinfo "${where[@]}" -o "%D" 2>/dev/null | awk '{n += $1} END {print n + 0}')
[ "$nodes_there" -ge "$NODES" ] ||
  say "NODES=$NODES: partition ${PARTITION:-(default)} has $nodes_there node(s): ask for at most $nodes_there"
if [ "$GPUS" -gt 0 ]; then
  most=$(sinfo "${where[@]}" -o "%G" 2>/dev/null | grep -o 'gpu[^,(]*' | awk -F: '{print $NF}' | sort -n | tail -1)
  [ "${most:-0}" -ge "$GPUS" ] ||
    say "GPUS_PER_NODE=$GPUS: partition ${PARTITION:-(default)} gives at most ${most:-0} GPU(s) a node (sinfo %G)"
fi

[ -x "$BIN/switchsweep" ] || say "$BIN/switchsweep is missing: run \`make install EXTRAS=\` in $PWD first"
if [ -n "${SWITCHSWEEP_TRACKING_URI:-}" ]; then
  "$BIN/python" - "$SWITCHSWEEP_TRACKING_URI" <<'EOF' || exit 2
import sys

from switchsweep.platform.errors import ConfigError
from switchsweep.platform.tracking import reachable
from switchsweep.platform.uris import is_database, is_server, redact

uri = sys.argv[1]
if not (is_server(uri) or is_database(uri)):
    sys.exit(f"slurm-sweep: SWITCHSWEEP_TRACKING_URI={redact(uri)} is not a server (http://HOST:PORT) or a database "
             "(postgresql://USER:PASSWORD@HOST/DB) every node reaches: give one, or unset it for a server on the first node")
try:
    reachable(uri)
except ConfigError as e:
    sys.exit(f"slurm-sweep: {e}")
EOF
fi
# The sweep's own settings, checked as the job will run them (every bad one is a line of switchsweep's).
device=(sweep.ray.use_gpu=false train.device=cpu)
[ "$GPUS" -gt 0 ] && device=(sweep.ray.use_gpu=true train.device=cuda)
"$BIN/switchsweep" sweep sweep.root="$SHARED/runs" sweep.ray.address=slurm-head:6379 \
  sweep.ray.storage_path="$SHARED/storage" sweep.ray.shared_fs=true \
  sweep.tracking_uri="${SWITCHSWEEP_TRACKING_URI:-http://slurm-head:5000}" sweep.ray.driver_resource=TRAIN_DRIVER \
  "${device[@]}" \
  "$@" --cfg > /dev/null || exit 2

options=(--nodes="$NODES" --time="$TIME")
[ -n "$PARTITION" ] && options+=(--partition="$PARTITION")
[ "$GPUS" -gt 0 ] && options+=(--gpus-per-node="$GPUS")
# shellcheck disable=SC2086
exec sbatch "${options[@]}" ${SBATCH_ARGS:-} deploy/slurm/sweep.sbatch "$@"
