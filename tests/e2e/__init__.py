"""End-to-end tests: real sweeps, servers, nodes and clusters on 127.0.0.1; every one marked slow by this folder."""
