import os
from pathlib import Path

import pytest
import torch

from switchsweep.kernels.backend import set_interpreter

# Triton's interpreter without CUDA, its compiled kernels with it: before any kernel module is imported.
set_interpreter(torch.cuda.is_available())
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test`'s two processes: one thread each, one process a core
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # and for the processes the tests start

from switchsweep.config.schema import Config  # noqa: E402

# `make test` runs the end-to-end modules on two processes, a module at a time: the longest start first (one
# started last would leave the other process idle at the end).
LONGEST_FIRST = (
    "test_faults_e2e.py",
    "test_sweep_e2e.py",
    "test_learning_e2e.py",
    "test_lost_head.py",
    "test_cluster_e2e.py",
    "test_cluster_launch.py",
    "test_concurrency_e2e.py",
    "test_latents.py",
)


E2E = Path(__file__).resolve().parent / "e2e"
CLUSTER = Path(__file__).resolve().parent / "cluster"
SLURM = Path(__file__).resolve().parent / "slurm"


def pytest_collection_modifyitems(items):
    for item in items:  # the end-to-end folder is slow as a whole; the cluster's and Slurm's have targets of their own
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.slow)
        elif CLUSTER in item.path.parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.cluster)
        elif SLURM in item.path.parents:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.slurm)
    slow = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FIRST:
            return 0, LONGEST_FIRST.index(name)
        return (1 if item.path in slow else 2), 0  # then the other slow modules, then the rest

    items.sort(key=rank)  # stable: a module's tests keep their order


@pytest.fixture
def tiny_cfg(tmp_path) -> Config:
    """A fast Switch-DiT config: tiny model, few steps, no progress bar, no sample grid."""
    cfg = Config()
    cfg.train.steps = 6
    cfg.train.log_every = 2
    cfg.train.progress = False
    cfg.train.device = "cpu"
    cfg.train.out_dir = str(tmp_path / "run")
    cfg.data.batch_size = 16
    cfg.sample.per_class = 0
    return cfg


@pytest.fixture(scope="session")
def digits_net(tmp_path_factory):
    """The digits feature network, trained once per test run into a temporary cache: (net, accuracy, cache
    dir). The parallel workers of `make test` train it once between them, each then keeping its own copy."""
    import fcntl
    import shutil

    from switchsweep.trainers.evaluation.features import load_or_train_digits_classifier

    run = tmp_path_factory.getbasetemp()
    shared = (run.parent if os.environ.get("PYTEST_XDIST_WORKER") else run) / "digits-net"
    shared.mkdir(exist_ok=True)
    with open(shared / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker trains, the others wait and read its file
        net, acc = load_or_train_digits_classifier(shared)
    cache = tmp_path_factory.mktemp("cache")
    for trained in shared.glob("*.pt"):
        shutil.copy(trained, cache / trained.name)
    return net, acc, cache


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (which cannot download its own browser here)."""
    import shutil

    path = shutil.which("chromium")
    if path is None:
        pytest.skip("no chromium on this machine: apt-get install -y chromium (.ci/run does) for the browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="session")
def ray_head():
    """One throwaway Ray head on 127.0.0.1 for the sweeps that run against a cluster (a start costs
    several seconds): its address. Its folder is short: Ray's unix sockets live there, and their paths
    may not exceed 107 bytes (a parallel worker's pytest folder is longer)."""
    import shutil
    import tempfile

    from tests.support.sweep_harness import start_head, stop_head

    temp = tempfile.mkdtemp(prefix="ssrh-", dir="/tmp")
    head, address = start_head(Path(temp))
    yield address
    stop_head(head)
    shutil.rmtree(temp, ignore_errors=True)
