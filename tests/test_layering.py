"""The package's layering, read from README.md's Layout table: imports go one way, from the
table's top to its bottom. A module may import its own row and the rows above it, at module
level and inside functions alike, and each row's third column ("imports (module level)") names
exactly the rows it imports at module level. The table is parsed from the README itself, so the
documentation and this check cannot drift apart."""
from __future__ import annotations

import ast
import dataclasses
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "distill_jax"


@dataclasses.dataclass
class Row:
    """One row of the Layout table that names part of the package."""
    index: int                 # its place in the table, 0 = top (the lowest layer)
    label: str                 # the first column as written
    units: dict                # short name ('models', 'run') -> dotted module or package ('distill_jax.models')
    imports: set               # the third column's names


@dataclasses.dataclass(frozen=True)
class Import:
    importer: str              # dotted module that imports
    path: str                  # its file, relative to the repository
    line: int
    target: str                # dotted module it imports
    module_level: bool         # False: inside a function


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def layout_rows(readme: str) -> list[Row]:
    """The Layout table's rows that name modules of the package, top to bottom. A first column
    lists paths in backquotes; a bare file name after the first takes the first one's folder
    (`distill_jax/modes.py`, `launcher.py`). The third column lists row names in backquotes, or
    'nothing'."""
    section = re.search(r"^## Layout\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README.md has no '## Layout' section"
    lines = [line for line in section.group(1).splitlines() if line.startswith("|")]
    header = _cells(lines[0])
    assert len(header) >= 3 and header[2].startswith("imports"), (
        f"Layout table header {header}: third column is not the imports"
    )
    rows = []
    for line in lines[2:]:
        cells = _cells(line)
        paths = re.findall(r"`([^`]+)`", cells[0])
        if not paths or not paths[0].startswith(PACKAGE + "/"):
            continue  # configs/, launch/, notebooks/, benchmarks/: users of the package, not part of it
        folder = paths[0].rstrip("/").rsplit("/", 1)[0] if not paths[0].endswith("/") else PACKAGE
        units = {}
        for path in paths:
            full = path if "/" in path.rstrip("/") else f"{folder}/{path}"
            dotted = full.rstrip("/").removesuffix(".py").replace("/", ".")
            units[dotted.rsplit(".", 1)[-1]] = dotted
        imports = set(re.findall(r"`([^`]+)`", cells[2]))
        assert imports or cells[2] == "nothing", (
            f"Layout row {cells[0]}: third column {cells[2]!r} names no rows and is not 'nothing'"
        )
        rows.append(Row(len(rows), cells[0], units, imports))
    return rows


def package_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the package under `root`."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _inside_function(node, parents) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def module_imports(root: pathlib.Path, modules: dict[str, pathlib.Path]) -> list[Import]:
    """Every import of a package module by a package module: `import`, `from ... import` (also
    relative), and `importlib.import_module` / `__import__` of a literal name; module-level or
    inside a function."""
    found = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # `from pkg import sub` imports the module pkg.sub; `from mod import name`, mod
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            elif (
                isinstance(node, ast.Call)
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and (
                    getattr(node.func, "attr", None) == "import_module"
                    or getattr(node.func, "id", None) == "__import__"
                )
            ):
                targets = [node.args[0].value]
            for target in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    found.append(Import(name, str(path.relative_to(root)), node.lineno, target,
                                        not _inside_function(node, parents)))
    return found


def row_of(module: str, rows: list[Row]):
    """The row whose unit holds `module` (the longest match), and the unit's short name."""
    best = None
    for row in rows:
        for short, dotted in row.units.items():
            if (module == dotted or module.startswith(dotted + ".")) and (best is None or len(dotted) > len(best[2])):
                best = (row, short, dotted)
    return (best[0], best[1]) if best else (None, None)


def upward_imports(root: pathlib.Path, readme: str) -> list[str]:
    """One line per import from a row to a row below it in the Layout table."""
    rows = layout_rows(readme)
    lines = []
    for imp in module_imports(root, package_modules(root)):
        (importer_row, _), (target_row, target_unit) = row_of(imp.importer, rows), row_of(imp.target, rows)
        if importer_row is None or target_row is None or target_row.index <= importer_row.index:
            continue
        where = "" if imp.module_level else " inside a function"
        lines.append(f"{imp.path}:{imp.line}: {imp.importer} imports {imp.target}{where}, but the Layout table puts "
                     f"`{target_unit}` (row {target_row.label}) below {importer_row.label}")
    return lines


def _readme() -> str:
    return (ROOT / "README.md").read_text()


def test_no_module_imports_a_row_below_its_own():
    assert upward_imports(ROOT, _readme()) == []


def test_every_module_of_the_package_has_a_row():
    rows = layout_rows(_readme())
    modules = package_modules(ROOT)
    for row in rows:
        for dotted in row.units.values():
            assert any(m == dotted or m.startswith(dotted + ".") for m in modules), (
                f"Layout row {row.label}: no module {dotted}"
            )
    missing = sorted(m for m in modules if m != PACKAGE and row_of(m, rows)[0] is None)
    assert missing == [], f"modules without a row in README.md's Layout table: {missing}"
    root_imports = [i for i in module_imports(ROOT, modules) if i.importer == PACKAGE]
    assert root_imports == [], f"{PACKAGE}/__init__.py imports the package's modules: {root_imports}"


def test_third_column_names_exactly_the_rows_each_row_imports():
    rows = layout_rows(_readme())
    names = {short: row for row in rows for short in row.units}
    actual = {row.index: {} for row in rows}  # row -> imported unit -> an example import
    for imp in module_imports(ROOT, package_modules(ROOT)):
        (importer_row, _), (target_row, target_unit) = row_of(imp.importer, rows), row_of(imp.target, rows)
        if imp.module_level and importer_row is not None and target_row is not None and target_row is not importer_row:
            actual[importer_row.index].setdefault(target_unit, f"{imp.path}:{imp.line} imports {imp.target}")
    problems = []
    for row in rows:
        unknown = sorted(n for n in row.imports if n not in names or names[n] is row)
        extra = sorted(set(actual[row.index]) - row.imports)
        listed_only = sorted(row.imports - set(actual[row.index]) - set(unknown))
        if unknown:
            problems.append(f"row {row.label}: third column names {unknown}, which are no other row's names")
        if extra:
            problems.append(f"row {row.label}: third column omits {extra} ("
                            + "; ".join(actual[row.index][n] for n in extra) + ")")
        if listed_only:
            problems.append(
                f"row {row.label}: third column lists {listed_only}, which it does not import at module level"
            )
    assert problems == [], "README.md's Layout table:\n" + "\n".join(problems)


FAKE_README = """# fake

## Layout

| path | its one job | imports (module level) |
|---|---|---|
| `distill_jax/errors.py` | errors | nothing |
| `distill_jax/low/` | a low layer | `errors` |
| `distill_jax/high.py`, `top.py` | above it | `low` |
| `configs/` | not the package | |

## Next
"""


def _fake_package(tmp_path, files: dict) -> pathlib.Path:
    for name, text in {"__init__.py": "", "errors.py": "", "low/__init__.py": "", "top.py": "", **files}.items():
        path = tmp_path / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_check_names_each_upward_import_module_level_relative_or_inside_a_function(tmp_path):
    root = _fake_package(tmp_path, {
        "high.py": "from distill_jax import low, top\n",  # same row and the row above: allowed
        "low/a.py": "import distill_jax.errors\nfrom distill_jax import high\n",
        "low/b.py": "from .. import top\n",
        "low/c.py": "import importlib\n\ndef f():\n    from distill_jax.high import g\n"
                    "    return importlib.import_module('distill_jax.top')\n",
    })
    lines = upward_imports(root, FAKE_README)
    assert len(lines) == 4, lines
    assert lines[0].startswith("distill_jax/low/a.py:2: distill_jax.low.a imports distill_jax.high, but the Layout "
                               "table puts `high` (row `distill_jax/high.py`, `top.py`) below `distill_jax/low/`")
    assert "distill_jax/low/b.py:1: distill_jax.low.b imports distill_jax.top," in lines[1]
    assert "distill_jax/low/c.py:4: distill_jax.low.c imports distill_jax.high inside a function" in lines[2]
    assert "distill_jax/low/c.py:5: distill_jax.low.c imports distill_jax.top inside a function" in lines[3]
    assert upward_imports(_fake_package(tmp_path / "clean", {"high.py": "from distill_jax import low, top\n"}),
                          FAKE_README) == []


def test_the_table_parser_reads_rows_top_to_bottom_with_bare_names_in_the_first_ones_folder():
    rows = layout_rows(FAKE_README)
    assert [r.units for r in rows] == [{"errors": "distill_jax.errors"}, {"low": "distill_jax.low"},
                                       {"high": "distill_jax.high", "top": "distill_jax.top"}]
    assert [r.imports for r in rows] == [set(), {"errors"}, {"low"}]
