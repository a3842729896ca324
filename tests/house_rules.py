"""The house rules of src/secateurs, checked by reading the code (``ast``), not by running it.

    python tests/house_rules.py        # prints every breach, exits 1 if there is one

- no function takes more than ``MAX_PARAMETERS`` parameters (an argument relay is a missing object);
- no import cycle between modules (module-level imports; a package's own ``__init__`` importing its
  submodules is not a cycle, a submodule importing names back from its package is);
- outside ``models/`` no module reads a model's attribute names (the sub-modules, norms and projections
  that ``models/families.py`` names): everything else asks the model adapter;
- no run of ``COPIED_LINES`` identical lines in two places (blank lines, comments, imports and
  docstrings passed over); the `duplicates` tool of the development machines also finds runs that differ
  only by names, which this check does not.

tests/test_house.py runs these checks in the test suite.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "secateurs"
MAX_PARAMETERS = 10
COPIED_LINES = 6
MODEL_CODE = "models"  # the one folder that may name a model's attributes


def modules(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its __init__.py)."""
    found = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


# --- parameters -------------------------------------------------------------------------------------
def long_signatures(src: Path = SRC) -> list[str]:
    """Functions with more than MAX_PARAMETERS parameters (self and cls not counted)."""
    breaches = []
    for name, path in modules(src).items():
        for node in ast.walk(_parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs] if p.arg not in ("self", "cls")]
                count = len(params) + (a.vararg is not None) + (a.kwarg is not None)
                if count > MAX_PARAMETERS:
                    breaches.append(f"{path.relative_to(src)}:{node.lineno} {node.name}() takes {count} parameters "
                                    f"(at most {MAX_PARAMETERS})")
    return breaches


# --- import cycles ----------------------------------------------------------------------------------
def _imported(module: str, path: Path, node: ast.ImportFrom | ast.Import, known: set[str]) -> set[str]:
    """The package's modules that one import statement loads (as named: the modules themselves)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if node.level:
        base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join([*base, *([node.module] if node.module else [])])
    else:
        target = node.module or ""
    submodules = {f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known}
    # names that are not submodules are read from ``target`` itself, which must then be loaded
    reads_target = target in known and len(submodules) < len(node.names)
    return submodules | ({target} if reads_target else set())


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """Imports that run when the module loads (not inside functions, nor under ``if TYPE_CHECKING``)."""
    found = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.Try):
            found += [n for n in node.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    known = modules(src)
    graph = {}
    for name, path in known.items():
        edges: set[str] = set()
        for node in _top_level_imports(_parse(path)):
            edges |= _imported(name, path, node, set(known))
        # a package importing its own submodules is how packages work, not a cycle
        graph[name] = {e for e in edges if e != name}
    return graph


def import_cycles(src: Path = SRC) -> list[str]:
    """Strongly connected groups of modules (Tarjan), each a cycle of module-level imports."""
    graph = import_graph(src)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return ["import cycle: " + " <-> ".join(group) for group in cycles]


# --- model attribute names --------------------------------------------------------------------------
def model_attribute_names(src: Path = SRC) -> set[str]:
    """The names models/families.py gives a decoder layer's sub-modules, norms and projections (read from
    its ``LayerLayout(...)`` calls and its ``PROJECTIONS`` table, without importing the package)."""
    tree = _parse(src / PACKAGE / MODEL_CODE / "families.py")
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "LayerLayout":
            names |= {c.value for arg in node.args[1:] for c in ast.walk(arg) if isinstance(c, ast.Constant)}
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "PROJECTIONS":
            names |= {value.elts[1].value for value in node.value.values}
    return names


def model_attribute_reads(src: Path = SRC) -> list[str]:
    """Reads of a model's attribute names (``x.self_attn``, ``getattr(x, "o_proj")``) outside models/."""
    names = model_attribute_names(src)
    breaches = []
    for name, path in modules(src).items():
        if name.split(".")[1:2] == [MODEL_CODE]:
            continue
        for node in ast.walk(_parse(path)):
            read = None
            if isinstance(node, ast.Attribute) and node.attr in names:
                read = node.attr
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                  and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value in names):
                read = node.args[1].value
            if read:
                breaches.append(f"{path.relative_to(src)}:{node.lineno} reads the model attribute '{read}' "
                                "(ask the adapter in models/)")
    return breaches


# --- copied code ------------------------------------------------------------------------------------
def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text with white space folded) of the lines that are code: no blank lines,
    comments, imports, docstrings or lone punctuation."""
    tree = _parse(path)
    skipped: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            skipped |= set(range(body[0].lineno, body[0].end_lineno + 1))
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skipped |= set(range(node.lineno, node.end_lineno + 1))
    lines = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        folded = " ".join(text.split("#", 1)[0].split()) if "#" in text and '"' not in text and "'" not in text \
            else " ".join(text.split())
        if number in skipped or not folded or folded.startswith("#") or all(c in "()[]{},:" for c in folded):
            continue
        lines.append((number, folded))
    return lines


def copied_code(src: Path = SRC) -> list[str]:
    """Runs of COPIED_LINES identical code lines that stand in two places."""
    seen: dict[tuple[str, ...], tuple[Path, int]] = {}
    pairs: dict[tuple[Path, Path], tuple[int, int]] = defaultdict(lambda: (0, 0))
    for path in modules(src).values():
        lines = _code_lines(path)
        for i in range(len(lines) - COPIED_LINES + 1):
            window = tuple(text for _, text in lines[i:i + COPIED_LINES])
            where = (path, lines[i][0])
            if window in seen and seen[window] != where:
                first = seen[window]
                key = (first[0], path)
                if key not in pairs:
                    pairs[key] = (first[1], lines[i][0])
            else:
                seen.setdefault(window, where)
    return [f"copied code: {a.relative_to(src)}:{la} ~ {b.relative_to(src)}:{lb} ({COPIED_LINES}+ identical lines)"
            for (a, b), (la, lb) in pairs.items()]


CHECKS = (long_signatures, import_cycles, model_attribute_reads, copied_code)


def main() -> int:
    breaches = [line for check in CHECKS for line in check()]
    for line in breaches:
        print(line)
    print(f"{len(breaches)} breach(es) of the house rules in {SRC / PACKAGE}")
    return 1 if breaches else 0


if __name__ == "__main__":
    sys.exit(main())
