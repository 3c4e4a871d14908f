"""The package's import graph: no cycle, and no import inside a function that could hide one.

The rule: a function inside ``sftkit`` may import a third-party package (the heavy or optional ones:
torch, transformers, peft, deepspeed, ray, gradio, vllm, datasets, detoxify, ...; they cost seconds
or are separate installs), never an ``sftkit`` module. An ``sftkit`` module imported inside a
function either hides an import cycle (the module importing it back would fail at import time) or
stands in for a layering the package should have; either way the fix is a module-level import and,
where that would close a cycle, moving code to the layer where it belongs.

One named exception: ``sftkit/cli.py``, the console-script dispatcher, loads the one command asked
for when it runs, so ``--help`` answers without torch and ``generate.py --cli`` never loads gradio.
No ``sftkit`` module imports it (checked below), so its deferred imports cannot close a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import sftkit

PACKAGE = Path(sftkit.__file__).resolve().parent
ROOT = PACKAGE.parent
DISPATCHER = "sftkit/cli.py"


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_names(node: ast.Import | ast.ImportFrom, module: str, path: Path) -> list[str]:
    """The absolute names an import statement names (``from a import b`` gives ``a.b`` and ``a``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def sftkit_imports(tree: ast.AST, module: str, path: Path, known: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, sftkit module) of each import in ``tree`` that names a module of the package."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = imported_names(node, module, path)
            hits = [n for n in names if n in known]
            if isinstance(node, ast.ImportFrom) and len(hits) > 1:
                hits = hits[:-1]  # ``from pkg import mod``: the module, not the package around it
            found += [(node.lineno, hit) for hit in hits if hit.split(".")[0] == "sftkit"]
    return found


def function_level_imports() -> list[str]:
    known, found = modules(), []
    for module, path in known.items():
        relative = path.relative_to(ROOT).as_posix()
        if relative == DISPATCHER:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found += [f"{relative}:{line} imports {name} inside {function.name}()"
                          for line, name in sftkit_imports(function, module, path, known)]
    return sorted(set(found))


def module_level_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports when it is imported (imports outside any function)."""
    known, graph = modules(), {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inside = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(f)}
        top = ast.Module(body=[], type_ignores=[])
        top.body = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in inside]
        graph[module] = {name for _, name in sftkit_imports(top, module, path, known) if name != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_function_imports_a_module_of_the_package():
    assert function_level_imports() == []


def test_the_package_has_no_import_cycle():
    assert cycles(module_level_graph()) == []


def test_nothing_in_the_package_imports_the_dispatcher():
    known = modules()
    importers = [module for module, path in known.items()
                 if "sftkit.cli" in {n for _, n in sftkit_imports(ast.parse(path.read_text()), module, path, known)}]
    assert importers == []


def test_the_checks_see_a_hidden_cycle(tmp_path):
    """The scanners find the pattern they forbid: a deferred import closing a cycle."""
    graph = {"sftkit.a": {"sftkit.b"}, "sftkit.b": {"sftkit.c"}, "sftkit.c": {"sftkit.a"}, "sftkit.d": {"sftkit.a"}}
    assert cycles(graph) == [["sftkit.a", "sftkit.b", "sftkit.c"]]
    code = ("from sftkit.data import DataError, pipeline\n\ndef run():\n    from sftkit.data.run import runner\n"
            "    from sftkit.data import DataError\n")
    known = {"sftkit.data.pipeline": tmp_path, "sftkit.data.run.runner": tmp_path, "sftkit.data": tmp_path}
    tree = ast.parse(code)
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    assert sftkit_imports(function, "sftkit.x", tmp_path / "x.py", known) == [(4, "sftkit.data.run.runner"),
                                                                             (5, "sftkit.data")]
    assert sftkit_imports(tree, "sftkit.x", tmp_path / "x.py", known) == [(1, "sftkit.data.pipeline"),
                                                                         (4, "sftkit.data.run.runner"),
                                                                         (5, "sftkit.data")]


def test_help_answers_without_loading_torch():
    """Each script's --help (and a package import on the way) never pays for torch and transformers."""
    import subprocess
    import sys

    probe = ("import runpy, sys\nsys.argv = [sys.argv[1], *sys.argv[2:]]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('loaded:', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    for script, args in (("finetune.py", ["--help"]), ("generate.py", ["--help"]), ("create_data.py", ["--help"])):
        done = subprocess.run([sys.executable, "-c", probe, str(ROOT / script), *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)
        assert "--" in done.stdout and "loaded: []" in done.stdout, (script, done.stdout[-500:], done.stderr[-500:])
