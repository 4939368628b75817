#!/usr/bin/env bash
# A GPU node's NVIDIA driver against the torch build `make install` takes from the registry (torch 2.13's
# default Linux build: CUDA 13.0, which runs on the 580 driver series or newer). Run by cluster.yaml's
# worker setup before the install: a driver too old is refused in one line, before a 4 GB download.
set -euo pipefail
MIN_DRIVER=580
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "check-driver: no nvidia-smi on this node, so no NVIDIA GPU to check"
  exit 0
fi
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1 | tr -d ' ') || true
if [ -z "$driver" ]; then
  echo "check-driver: nvidia-smi reports no driver version: the NVIDIA driver is not loaded; use the Deep Learning Base OSS AMI of cluster.yaml" >&2
  exit 1
fi
if [ "${driver%%.*}" -lt "$MIN_DRIVER" ]; then
  echo "check-driver: NVIDIA driver $driver is older than $MIN_DRIVER, the oldest torch's CUDA 13.0 build runs on: use the Ubuntu 24.04 Deep Learning Base OSS AMI of cluster.yaml or install a newer driver" >&2
  exit 1
fi
echo "check-driver: NVIDIA driver $driver runs torch's CUDA 13.0 build (needs $MIN_DRIVER or newer)"
