"""The package's shape holds by itself: imports point down only, no circles (function-level imports
included), the tests never lean on the benchmarks, and only the record's module touches sweep.json."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "switchsweep"
# What each room may import: cli -> sweeps -> dashboards -> results, sweeps -> trainers -> models -> kernels;
# config above the ground floor, platform the ground floor.
BELOW = {
    "__main__": {"cli"},
    "cli": {"sweeps", "dashboards", "results", "trainers", "models", "kernels", "config", "platform"},
    "sweeps": {"dashboards", "results", "trainers", "models", "kernels", "config", "platform"},
    "dashboards": {"results", "config", "platform"},
    "results": {"config", "platform"},
    "trainers": {"models", "kernels", "config", "platform"},
    "models": {"kernels", "config", "platform"},
    "kernels": {"platform"},
    "config": {"platform"},
    "platform": set(),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in modules}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(p, modules) for m, p in modules.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "package"


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return [
        (m, d)
        for m, deps in graph.items()
        for d in deps
        if _room(m) not in (_room(d), "package") and _room(d) not in BELOW[_room(m)]
    ]


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = "open"
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                return path[path.index(d) :] + [d]
            if d not in state and (circle := visit(d)):
                return circle
        state[m] = "done"
        path.pop()
        return None

    return [c for m in sorted(graph) if m not in state and (c := visit(m))]


def test_imports_point_down_only():
    assert _upward(_graph()) == []


def test_no_import_circles():
    assert _circles(_graph()) == []


def test_the_checks_find_a_circle_through_a_function_level_import_and_an_upward_import(tmp_path):
    trial, entry = tmp_path / "trial.py", tmp_path / "entry.py"
    trial.write_text("from switchsweep.sweeps.entry import f\n")
    entry.write_text("def f():\n    from switchsweep.sweeps.trial import run\n")
    modules = {"switchsweep.sweeps.trial": trial, "switchsweep.sweeps.entry": entry}
    graph = {m: _imports(p, modules) for m, p in modules.items()}
    assert _circles(graph) == [["switchsweep.sweeps.entry", "switchsweep.sweeps.trial", "switchsweep.sweeps.entry"]]
    assert _upward({"switchsweep.platform.x": {"switchsweep.sweeps.trial"}}) == [
        ("switchsweep.platform.x", "switchsweep.sweeps.trial")
    ]


def test_tests_never_import_the_benchmarks():
    here = Path(__file__).resolve().parent
    leaning = []
    for path in here.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            leaning += [(path.name, n) for n in names if n.split(".")[0] == "benchmarks"]
    assert leaning == []


def test_every_harness_module_has_one_name():
    """The harness is imported as tests.support.<module> everywhere, benchmarks included, never by a bare name."""
    repo = Path(__file__).resolve().parents[1]
    support = {p.stem for p in (repo / "tests" / "support").glob("*.py")} - {"__init__"}
    leaning = []
    for path in [*repo.joinpath("tests").rglob("*.py"), *repo.joinpath("benchmarks").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            leaning += [(path.name, n) for n in names if n.split(".")[0] in support]
    assert leaning == []


def test_only_the_records_module_names_its_file():
    from switchsweep.platform.sweep_dir import STATE_FILE

    def names_it(path: Path) -> bool:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == STATE_FILE:
                return True
            if isinstance(node, ast.Name | ast.alias) and "STATE_FILE" in (
                getattr(node, "id", None),
                node.__dict__.get("name"),
            ):
                return True
        return False

    users = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if names_it(p)}
    assert users == {"platform/sweep_dir.py", "platform/sweep_record.py"}
