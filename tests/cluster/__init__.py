"""The cluster's own checks, run by `make cluster-check`: cluster.yaml's commands over SSH, a fake
autoscaling cluster, a lost head."""
