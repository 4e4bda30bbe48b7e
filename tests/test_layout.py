"""The package's shape, checked from the code: no import circles, imports run down the
layers of docs/architecture.md, every DVC stage's code deps cover what the stage imports,
and README's Layout section names every module there is (and no other)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("codec", "flows")

# Top to bottom (docs/architecture.md); a module may import its own layer or a lower one.
LAYERS = ("cli", "registry", "evaluation", "training", "inference", "model", "data", "audio", "shared")


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``path`` imports anywhere (module level, in functions, for type checking)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from codec.inference import bitstream`` imports the submodule
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(module_name(path))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph = {m: imports_of(p, modules) for m, p in modules.items()}
    # Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first.
    for m in list(graph):
        parts = m.split(".")
        graph[m] |= {".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in graph}
        graph[m].discard(m)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            # A package's __init__ is imported by its own children: not a circle of the code.
            if m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                return [*stack[stack.index(n) :], n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "codec":
        return "flows"
    if len(parts) >= 3 or (len(parts) == 2 and parts[1] in LAYERS):
        return parts[1]
    return "shared"  # codec/params.py, errors.py, files.py, provenance.py, tracking.py, ...


def test_no_import_circles() -> None:
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = import_graph()
    graph["codec.audio.io"] = graph["codec.audio.io"] | {"codec.registry.promote"}
    cycle = find_cycle(graph)
    assert cycle is not None and "codec.audio.io" in cycle and "codec.registry.promote" in cycle


def test_imports_run_down_the_layers() -> None:
    order = {name: i for i, name in enumerate(LAYERS)}
    wrong = []
    for m, deps in import_graph().items():
        if layer_of(m) == "flows" or m == "codec.__main__":
            continue
        for d in deps:
            if layer_of(d) == "flows":
                wrong.append(f"{m} -> {d}")
            elif order[layer_of(d)] < order[layer_of(m)] and not m.startswith(d + "."):
                wrong.append(f"{m} ({layer_of(m)}) -> {d} ({layer_of(d)})")
    assert not wrong, "imports that run up the layers:\n" + "\n".join(sorted(wrong))


def test_the_training_core_imports_no_tracking_or_evaluation() -> None:
    # docs/architecture.md, rule 3: the loop runs on a bare GPU box (torch, numpy, soundfile only).
    graph = import_graph()
    closure = closure_of(graph, ["codec.training.loop"])
    assert not {m for m in closure if layer_of(m) in ("evaluation", "registry", "cli", "inference")}
    heavy = {"mlflow", "prefect", "great_expectations", "pandas", "dvc"}
    for m in closure:
        tree = ast.parse(project_modules()[m].read_text(encoding="utf-8"))
        top = {
            (a.name if isinstance(n, ast.Import) else n.module or "").split(".")[0]
            for n in tree.body
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names
        }
        assert not top & heavy, f"{m} imports {top & heavy} at module level"


def closure_of(graph: dict[str, set[str]], roots: list[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo.extend(graph.get(m, ()))
    return seen


def stage_modules() -> dict[str, str]:
    """DVC stage -> the module its ``codec <stage>`` command runs (from the CLI's table)."""
    sys.path.insert(0, str(REPO))
    from codec.cli.main import COMMANDS

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    out = {}
    for name, stage in stages.items():
        words = str(stage["cmd"]).split()
        assert words[:1] == ["codec"], f"stage {name}: cmd should run codec <stage>"
        out[name] = COMMANDS[words[1]][0]
    return out


def covered(path: Path, deps: list[Path]) -> bool:
    return any(path == d or d in path.parents for d in deps)


@pytest.mark.parametrize("stage", sorted(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]))
def test_stage_deps_cover_the_code_it_imports(stage: str) -> None:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"][stage]
    deps = [REPO / str(d) for d in spec.get("deps", []) if not str(d).startswith("${")]
    graph = import_graph()
    modules = project_modules()
    closure = closure_of(graph, [stage_modules()[stage]])
    missing = sorted(str(modules[m].relative_to(REPO)) for m in closure if not covered(modules[m], deps))
    assert not missing, f"dvc.yaml stage {stage} runs code its deps do not list: {', '.join(missing)}"
    # Data files the code reads next to it (the corpus' sentences) are covered too.
    for m in closure:
        for data in modules[m].parent.glob("*.txt"):
            assert covered(data, deps), f"dvc.yaml stage {stage}: {data.relative_to(REPO)} not a dep"


def test_the_train_stage_depends_on_every_key_that_changes_results() -> None:
    """dvc.yaml lists train's keys one by one (so speed and display keys don't retrain); a new
    TrainParams field must be added there, or to the list of keys that change nothing."""
    import dataclasses

    import yaml

    from codec.training.params import TrainParams

    no_effect = {"threads", "progress", "cache_audio", "cache_audio_mb", "loader_workers", "prefetch_batches", "resume"}
    listed = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["params"]
    keys = {k.removeprefix("train.") for k in listed if isinstance(k, str) and k.startswith("train.")}
    # The level settings the checkpoint records (codec.training.stage.data_levels).
    assert {k for k in listed if isinstance(k, str) and not k.startswith("train.")} == {
        "normalize.peak_ceiling_db",
        "normalize.limiter_window_ms",
    }
    fields = {f.name for f in dataclasses.fields(TrainParams)}
    assert keys == fields - no_effect
    # dvc repro refuses a listed key that params.yaml lacks ("Parameters ... are missing")
    params = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    assert sorted(keys - set(params)) == []


# --- README's Layout section against the tree ---------------------------------------------


def readme_layout_modules() -> list[str]:
    """The modules README's Layout section lists: the first column of its tables."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert "\n## Layout\n" in text, "README.md has no '## Layout' section"
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+\.py)` \|", section, flags=re.MULTILINE)


def modules_with_code() -> set[str]:
    """Every .py file under codec/ and flows/, except a package __init__ that holds only its docstring."""
    found = set()
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            body = ast.parse(path.read_text(encoding="utf-8")).body
            if path.name == "__init__.py" and all(isinstance(n, ast.Expr) for n in body):
                continue
            found.add(path.relative_to(REPO).as_posix())
    return found


def test_the_readme_layout_names_every_module_and_only_modules_that_exist() -> None:
    listed = readme_layout_modules()
    assert len(listed) == len(set(listed)), f"listed twice: {sorted({m for m in listed if listed.count(m) > 1})}"
    tree = modules_with_code()
    missing = sorted(tree - set(listed))
    assert not missing, "README.md, ## Layout: add a row for " + ", ".join(missing)
    gone = sorted(m for m in set(listed) - tree if not (REPO / m).is_file())
    assert not gone, "README.md, ## Layout: no such module " + ", ".join(gone)


def test_the_layout_check_sees_a_module_the_readme_leaves_out() -> None:
    listed = set(readme_layout_modules())
    assert "codec/data/normalize.py" in listed and "flows/pipeline.py" in listed
    assert "codec/cli/__init__.py" not in modules_with_code()  # its docstring only
    assert "codec/audio/__init__.py" in modules_with_code()  # defines Array
    assert {"codec/params.py", "codec/cli/main.py", "flows/overrides.py"} <= modules_with_code()


def test_the_version_is_the_one_in_pyproject() -> None:
    import tomllib

    import codec

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert codec.__version__ == pyproject["version"]
