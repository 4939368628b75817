#!/usr/bin/env bash
# A GPU node's watchdog (cluster.yaml's worker_start_ray_commands start it): only the head's autoscaler ends
# idle nodes, so a node whose head is gone would bill until someone runs `make cluster-down`. Every
# EVERY_S seconds it opens a TCP connection to the head's Ray port; once none has opened for LIMIT_S
# seconds in a row it logs why to ~/watchdog.log and shuts the node down (cluster.yaml sets
# InstanceInitiatedShutdownBehavior: terminate, so a shut-down node is terminated, not stopped). A head
# that is only busy still accepts connections (the kernel answers for it), so it never fires then.
# Settings: ~/.switchsweep/watchdog.env may set SWITCHSWEEP_WATCHDOG_S (default 600),
# SWITCHSWEEP_WATCHDOG_EVERY_S (30) and SWITCHSWEEP_WATCHDOG_SHUTDOWN (the command; default a shutdown).
set -u
HEAD=${1:?usage: watchdog.sh HEAD_IP [PORT]}
PORT=${2:-6379}
# shellcheck disable=SC1090
[ -f ~/.switchsweep/watchdog.env ] && . ~/.switchsweep/watchdog.env
LIMIT_S=${SWITCHSWEEP_WATCHDOG_S:-600}
EVERY_S=${SWITCHSWEEP_WATCHDOG_EVERY_S:-30}
SHUTDOWN=${SWITCHSWEEP_WATCHDOG_SHUTDOWN:-"$(command -v sudo || true) shutdown -h now"}
LOG=~/watchdog.log
mkdir -p ~/.switchsweep
exec 9>~/.switchsweep/watchdog.lock
flock -n 9 || exit 0  # one watchdog a node: a restart of Ray starts this again
echo "$(date -Is) watchdog: watching $HEAD:$PORT every $EVERY_S s, shutting down after $LIMIT_S s without it" >> "$LOG"
since=""
while true; do
  if timeout 5 bash -c "exec 3<>/dev/tcp/$HEAD/$PORT" 2>/dev/null; then
    since=""
  else
    now=$(date +%s)
    since=${since:-$now}
    if [ $((now - since)) -ge "$LIMIT_S" ]; then
      echo "$(date -Is) watchdog: the head $HEAD:$PORT has not answered for $((now - since)) s (limit $LIMIT_S s): shutting this node down" >> "$LOG"
      eval "$SHUTDOWN"
      exit 0
    fi
  fi
  sleep "$EVERY_S"
done
