"""The package's shape: imports point one way (cli -> app -> engine / reporting -> models / fewshot -> memory; data,
config and options import neither engine nor models), no import cycles, no private cross-module imports, no stdlib
shadowing, references for tests, one idea a file (functions to 60 lines, files to 450, the hand-written backward
passes and literal references excepted); and the tests' shape: tests/ mirrors the package's folders, shared helpers
live in tests/helpers/.

Static (ast) over every import in fewshot_mann/, including imports inside functions: a lazy import that closes a cycle
is still a cycle in the design."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "fewshot_mann"
# modules that may import a literal reference: the plain-loop baseline of the speed benchmark
MAY_IMPORT_REFERENCE = {"fewshot_mann.engine.bench"}
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 450
# layer -> the layers it must not import (cli -> app -> engine / reporting -> models -> memory; data, config below)
ABOVE_MODELS = {"cli", "app", "engine", "reporting"}
NOT_IMPORTED_BY = {
    "app": {"cli"},
    "engine": {"cli", "app"},
    "reporting": {"cli", "app"},
    "models": ABOVE_MODELS,
    "fewshot": ABOVE_MODELS,
    "memory": ABOVE_MODELS | {"models", "data", "fewshot"},
    "data": ABOVE_MODELS | {"models", "memory", "fewshot"},
    "config": ABOVE_MODELS | {"models", "memory", "fewshot", "data"},
    "options": ABOVE_MODELS | {"models", "memory", "fewshot", "data", "config"},
    "errors": ABOVE_MODELS | {"models", "memory", "fewshot", "data", "config"},
    "fileio": ABOVE_MODELS | {"models", "memory", "fewshot", "data", "config"},
    "limits": ABOVE_MODELS | {"models", "memory", "fewshot", "data"},
    "encoder_names": ABOVE_MODELS | {"models", "memory", "fewshot", "data", "config"},
    "text": ABOVE_MODELS | {"models", "memory", "fewshot", "data", "config"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> list[tuple[str, list[str]]]:
    """[(imported module, [names taken from it])] for every import statement in the file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("fewshot_mann")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fewshot_mann"):
            assert node.level == 0, f"{path}: relative import (the package imports absolutely)"
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub, []) if sub in known else (node.module, [a.name]))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {target for target, _ in imports(p, set(mods)) if target in mods and target != m} for m, p in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_private_names_imported_across_modules():
    mods = modules()
    bad = [f"{m} imports {n} from {t}" for m, p in mods.items() for t, names in imports(p, set(mods))
           for n in names if n.startswith("_") and t != m]
    assert bad == []


def test_production_code_never_imports_a_reference():
    mods = modules()
    bad = [f"{m} imports {t}" for m, p in mods.items() for t, _ in imports(p, set(mods))
           if t.endswith(".reference") and not m.endswith(".reference") and m not in MAY_IMPORT_REFERENCE]
    assert bad == []


def test_no_module_shadows_the_standard_library():
    assert [m for m in modules() if m.rpartition(".")[2] in sys.stdlib_module_names] == []


def exempt_from_size_limits(module: str) -> bool:
    """The hand-written backward passes (``memory/*/sequence.py``: one long, literal derivation each) and
    the literal references (``reference.py``: the paper's equations written out, on purpose)."""
    return module.startswith("fewshot_mann.memory.") and module.rpartition(".")[2] in ("sequence", "reference")


def long_functions(limit: int = MAX_FUNCTION_LINES) -> list[str]:
    long = []
    for m, p in modules().items():
        if exempt_from_size_limits(m):
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > limit:
                long.append(f"{m}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    return long


def test_no_function_over_60_lines():
    assert long_functions() == []


def test_no_file_over_450_lines():
    """One idea per file: a module past 450 lines holds several (the C++ kernel, not Python, is not counted)."""
    big = [f"{m}: {n} lines" for m, p in modules().items()
           if not exempt_from_size_limits(m) and (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert big == []


def test_size_limits_find_a_long_function():
    assert long_functions(limit=5), "every module with a function over 5 lines would be listed"


def layer(module: str) -> str:
    """The layer of a module: its sub-package (``data``, ``engine``, ...), or the module's own name at the top."""
    return module.split(".")[1] if module.count(".") else module


def wrong_way_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} imports {t}" for m, targets in edges.items() for t in targets
                  if layer(t) in NOT_IMPORTED_BY.get(layer(m), set()))


def test_imports_point_one_way():
    """cli -> app -> engine / reporting -> models -> memory; data and config import neither engine nor
    models (an input pipeline is handed to data/, data never asks a model)."""
    assert wrong_way_imports(graph()) == []


def test_import_direction_finds_a_wrong_way_import():
    edges = {"fewshot_mann.data.folder": {"fewshot_mann.models.backbones", "fewshot_mann.data.scan"},
             "fewshot_mann.engine.trainer": {"fewshot_mann.models.mann"}}
    assert wrong_way_imports(edges) == ["fewshot_mann.data.folder imports fewshot_mann.models.backbones"]


def imports_of_tests(source: str) -> list[str]:
    """The modules a test file imports that are conftest or a test module (``test_*``): what a test
    shares with others belongs in tests/helpers/, its fixtures in a conftest.py pytest finds itself."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names]
    return sorted({m for m in found for part in m.split(".") if part == "conftest" or part.startswith("test_")})


def test_test_import_finder_finds_conftest_and_test_modules():
    assert imports_of_tests("from conftest import tiny_config\nimport test_fast\nfrom memory.test_fast import make\n"
                            "from helpers import tiny_config\nimport helpers.lineage\n") == [
        "conftest", "conftest.tiny_config", "memory.test_fast", "memory.test_fast.make", "test_fast"]
    assert imports_of_tests("from helpers import test_fast\n") == ["helpers.test_fast"]


def test_no_test_file_imports_conftest_or_another_test_module():
    bad = {str(p.relative_to(TESTS)): found for p in sorted(TESTS.rglob("*.py"))
           if (found := imports_of_tests(p.read_text()))}
    assert bad == {}


def test_tests_folders_mirror_the_package_folders():
    """Every folder of fewshot_mann/ with modules has its tests in tests/<folder>/; every test folder but
    helpers/ is such a folder (the package-wide tests sit at tests/ top level); what is neither a test
    module nor a conftest.py is a helper, in tests/helpers/."""
    package = {d.name for d in PACKAGE.iterdir() if d.is_dir() and any(d.rglob("*.py"))}
    tested = {d.name for d in TESTS.iterdir() if d.is_dir() and any(d.glob("test_*.py"))}
    test_folders = {d.name for d in TESTS.iterdir() if d.is_dir() and d.name != "__pycache__"}
    assert package - tested == set(), "package folders without a tests/ folder of test modules"
    assert test_folders - package - {"helpers"} == set(), "tests/ folders that mirror no package folder"
    strays = [str(f.relative_to(TESTS)) for f in sorted(TESTS.rglob("*.py"))
              if not (f.name == "conftest.py" or f.name.startswith("test_") or f.relative_to(TESTS).parts[0] == "helpers")]
    assert strays == [], "modules in tests/ that are neither tests, conftest.py nor in helpers/"
