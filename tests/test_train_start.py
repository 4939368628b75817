"""What each trial's Ray Train job starts: no process or import that a local trial does not use."""

import pickle
import subprocess
import sys
import time

from ray.train import ScalingConfig
from ray.train.v2._internal.callbacks import BackendSetupCallback, DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

from switchsweep.sweeps import loopback_ddp
from switchsweep.sweeps.compat import TorchTrainerWithoutDatasets


def test_the_controller_side_of_the_loopback_backend_imports_no_torch():
    # What Train's controller unpickles and calls: the config, its backend, the functions it sends to workers.
    shipped = pickle.dumps(
        (loopback_ddp.LoopbackTorchConfig(timeout_s=60), loopback_ddp._serve, loopback_ddp._join, loopback_ddp._leave)
    )
    code = (
        "import pickle, sys; cfg, *fns = pickle.loads(sys.stdin.buffer.read()); cfg.backend_cls(); "
        "assert cfg.timeout_s == 60 and cfg.to_dict()['backend'] is None; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], input=shipped, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "[]"


def test_the_controller_unpickles_a_workers_spec_without_the_worker_side():
    # Train's controller imports the train function's module and unpickles its config only to pass them on.
    from switchsweep.config.schema import Config
    from switchsweep.sweeps.train_entry import train_worker
    from switchsweep.sweeps.worker_spec import SweepReports, WorkerSpec

    cfg = Config()
    cfg.model.top_k = 1
    spec = WorkerSpec(cfg, "run", SweepReports("s", "sqlite:///x.db", "", 4, (4,)), "t", 1, 1.0)
    code = (
        "import pickle, sys; fn, cfg = pickle.loads(sys.stdin.buffer.read()); "
        "assert cfg['spec'].config.model.top_k == 1; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlflow', 'ray')))"
    )
    shipped = pickle.dumps((train_worker, {"spec": spec}))
    out = subprocess.run([sys.executable, "-c", code], input=shipped, capture_output=True, check=True)
    assert out.stdout.decode().strip() == "[]"


def test_trials_train_without_ray_datas_dataset_manager():
    trainer = TorchTrainerWithoutDatasets(
        lambda config: None,
        scaling_config=ScalingConfig(num_workers=1),
        torch_config=loopback_ddp.LoopbackTorchConfig(),
    )
    kinds = {type(cb) for cb in trainer._create_default_callbacks()}
    assert DatasetsCallback not in kinds
    assert {BackendSetupCallback, PlacementGroupCleanerCallback} <= kinds  # the backend, and ASHA's freed workers


def test_a_workers_process_start_is_read_from_proc_not_from_when_it_asks():
    before = time.time()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import time; time.sleep(1.5); from switchsweep.sweeps.worker import "
            "process_start_time; print(process_start_time(), time.time())",
        ],
        capture_output=True,
        check=True,
    )
    started, asked = map(float, out.stdout.split())
    assert before - 0.05 <= started <= before + 1.0  # 10 ms ticks; a Python process starts well within a second
    assert asked - started >= 1.5
