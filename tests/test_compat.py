"""The private parts of Ray, Tune, Train and Optuna the sweeps rely on (`sweeps.compat`): each still where
the pinned versions keep it, and no other module of the package reaching into such a part."""

import ast
import importlib
import inspect
from pathlib import Path

import optuna
import pytest
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import BasicVariantGenerator

from switchsweep.sweeps import compat

PACKAGE = Path(compat.__file__).resolve().parents[1]
LIBRARIES = ("ray", "optuna")
UPGRADE = "changed by the installed version (pinned in pyproject.toml): update switchsweep/sweeps/compat.py"


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _modules() -> dict[str, Path]:
    return {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
    }


def _own_private_names(trees: list[ast.AST]) -> set[str]:
    """Every private name the package defines itself: functions, classes, attributes, variables, arguments."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # names kept in strings (_OWN)
                names.add(node.value)
    return {n for n in names if _private(n)}


def _other_libraries(tree: ast.AST) -> set[str]:
    """Names a module binds by importing a library other than Ray and Optuna (torch, numpy, ...)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            root = (node.module or "") if isinstance(node, ast.ImportFrom) else node.names[0].name
            if root.split(".")[0] not in (*LIBRARIES, "switchsweep", ""):
                bound.update((a.asname or a.name).split(".")[0] for a in node.names)
    return bound


def _root(node: ast.expr) -> str:
    while isinstance(node, ast.Attribute | ast.Call | ast.Subscript):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def _reaches(tree: ast.AST, own: set[str]) -> list[str]:
    """Private library names a module's source touches: an import of a private module or name of Ray or
    Optuna; an attribute or keyword named privately that the package does not define itself, on anything
    but another library's module (torch._foreach_lerp_ is torch's business)."""
    found, others = [], _other_libraries(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LIBRARIES:
            parts = node.module.split(".") + [a.name for a in node.names]
            found += [f"from {node.module} import {a.name}" for a in node.names if any(map(_private, parts))]
        elif isinstance(node, ast.Import):
            found += [
                a.name
                for a in node.names
                if a.name.split(".")[0] in LIBRARIES and any(map(_private, a.name.split(".")))
            ]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            if _root(node) in others:
                continue
            found.append(f".{node.attr} (line {node.lineno})")
        elif isinstance(node, ast.keyword) and node.arg and _private(node.arg) and node.arg not in own:
            found.append(f"{node.arg}= (line {node.value.lineno})")
    return found


def _overrides(module_name: str) -> list[str]:
    """Private methods of a Ray or Optuna base class that a class of the module redefines."""
    module = importlib.import_module(module_name)
    found = []
    for cls in vars(module).values():
        if not (inspect.isclass(cls) and cls.__module__ == module_name):
            continue
        bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in LIBRARIES]
        names = [n for n in vars(cls) if _private(n) and n != "_abc_impl"]  # _abc_impl: set by ABCMeta on every class
        found += [f"{cls.__name__}.{n}" for n in names if any(n in vars(b) for b in bases)]
    return found


def test_no_module_but_compat_touches_a_private_part_of_ray_or_optuna():
    modules = _modules()
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    own = _own_private_names(list(trees.values()))
    touching = {
        name: reaches
        for name in modules
        if name not in (compat.__name__, "switchsweep.__main__")
        and (reaches := _reaches(trees[name], own) + _overrides(name))
    }
    assert touching == {}, "private parts of Ray/Optuna outside switchsweep/sweeps/compat.py: move them there"


def test_the_check_finds_each_kind_of_reach():
    tree = ast.parse(
        "from ray._private import services\nimport ray._private.worker\nfrom ray.train.v2 import _internal\n"
        "t._local_tuner\nray.init(_node_ip_address='x')\nself._mine\nimport torch\ntorch._foreach_add_(a, b)\n"
    )
    assert _reaches(tree, {"_mine"}) == [
        "from ray._private import services",
        "ray._private.worker",
        "from ray.train.v2 import _internal",
        "._local_tuner (line 4)",
        "_node_ip_address= (line 5)",
    ]
    assert compat.TorchTrainerWithoutDatasets  # made on first use (no torch in Train's controller)
    assert sorted(_overrides(compat.__name__)) == [
        "ReporterWithoutBestLine._current_best_trial",
        "TorchTrainerWithoutDatasets._create_default_callbacks",
    ]


def test_a_ray_address_is_canonicalised_without_a_cluster():
    assert compat.canonical_address("10.1.2.3:6379") == "10.1.2.3:6379", UPGRADE


def test_the_session_folder_and_the_loopback_switch_are_where_ray_keeps_them():
    from ray._private import ray_constants, worker
    from ray._private.node import Node

    assert hasattr(worker, "_global_node") and callable(getattr(Node, "get_temp_dir_path", None)), UPGRADE
    assert isinstance(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, str), UPGRADE
    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool), UPGRADE
    assert "_node_ip_address" in inspect.getsource(ray.init), UPGRADE  # read from its **kwargs


def test_trains_torch_backend_steps_the_loopback_backend_repeats_are_there():
    from ray.train.torch import config

    assert inspect.signature(config._set_torch_distributed_env_vars).parameters == {}, UPGRADE
    assert list(inspect.signature(config._shutdown_torch).parameters) == ["destroy_process_group"], UPGRADE


def test_a_tuner_gives_back_its_callbacks_searcher_and_scheduler(tmp_path):
    callback, searcher = tune.Callback(), BasicVariantGenerator()
    scheduler = ASHAScheduler(metric="loss", mode="min")
    tuner = tune.Tuner(
        lambda config: None,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler),
        run_config=tune.RunConfig(callbacks=[callback], storage_path=str(tmp_path)),
    )
    callbacks, got_searcher, got_scheduler = compat.restored_parts(tuner)
    assert callback in callbacks and got_searcher is searcher and got_scheduler is scheduler, UPGRADE
    assert not ray.is_initialized()


def test_trains_default_callbacks_still_hold_the_dataset_manager_it_drops():
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks import DatasetsCallback

    assert callable(getattr(TorchTrainer, "_create_default_callbacks", None)), UPGRADE
    assert "DatasetsCallback" in inspect.getsource(TorchTrainer._create_default_callbacks.__code__), UPGRADE
    assert issubclass(DatasetsCallback, object)
    assert compat.TORCH_FRAMEWORK.value == "torch", UPGRADE


def test_the_reporter_drops_its_best_trial_line():
    reporter = compat.ReporterWithoutBestLine(metric_columns=["loss"])
    assert reporter._current_best_trial([]) == (None, None), UPGRADE


def test_asha_forgets_a_trial_it_was_told_of():
    scheduler = ASHAScheduler(metric="loss", mode="min")
    assert isinstance(scheduler._trial_info, dict), UPGRADE
    scheduler._trial_info["t1"] = object()
    compat.forget_trial(scheduler, "t1")
    assert "t1" not in scheduler._trial_info


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_an_optuna_trials_storage_id_reopens_it():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    study.ask()
    asked = study.ask()
    again = optuna.trial.Trial(study, compat.storage_id(asked))
    assert again.number == asked.number == 1, UPGRADE
