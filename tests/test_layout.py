"""The layout the README draws is the tree, and the import boundaries it promises hold."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pgpo", "sde_lab", "llm_runs")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (lazy imports inside functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def modules_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "fixtures" not in p.parts)


@pytest.mark.parametrize(("package", "other"), [("llm_runs", "sde_lab"), ("sde_lab", "llm_runs"),
                                                ("pgpo", "llm_runs"), ("pgpo", "sde_lab")])
def test_the_halves_share_only_pgpo(package, other):
    offenders = [str(p.relative_to(ROOT)) for p in modules_of(ROOT / package)
                 if any(m == other or m.startswith(other + ".") for m in imported_modules(p))]
    assert not offenders, f"{offenders} import {other}"


def test_the_trainer_core_never_imports_the_experiment_or_the_tools():
    core = [p for p in modules_of(ROOT / "llm_runs") if not {"experiment", "tools"} & set(p.parts)
            and p.name != "__main__.py"]  # the command line dispatches to all of them
    assert len(core) > 10
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p)
                                                   if m.startswith(("llm_runs.experiment", "llm_runs.tools")))
                 for p in core}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_sde_lab_library_never_imports_its_studies():
    library = [p for p in modules_of(ROOT / "sde_lab") if "studies" not in p.parts and p.name != "__main__.py"]
    assert len(library) > 8
    offenders = [str(p.relative_to(ROOT)) for p in library
                 if any(m.startswith("sde_lab.studies") for m in imported_modules(p))]
    assert not offenders


def top_level_imports(path: Path, package: str) -> set[str]:
    """The `package` modules `path` imports when it is itself imported (module level: no lazy imports, no
    `if TYPE_CHECKING:` blocks), as dotted names of modules."""
    found = set()
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(package)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith(package):
            found |= {f"{node.module}.{a.name}" if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").exists()
                      else node.module for a in node.names}
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_two_modules_import_each_other_at_import_time(package):
    """The import graph at import time is acyclic (a cycle works only while its import order holds)."""
    graph = {module_name(p): {m for m in top_level_imports(p, package) if m != module_name(p)}
             for p in modules_of(ROOT / package)}
    done, cycle = set(), []

    def visit(node, trail):
        if node in trail:
            cycle.append(trail[trail.index(node):] + [node])
            return
        if node in done or node not in graph:
            return
        for nxt in graph[node]:
            if not cycle:
                visit(nxt, trail + [node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    assert not cycle, " → ".join(cycle[0])


def test_no_llm_runs_module_does_five_jobs():
    """A module of more than 400 lines is cut along its jobs (the trainer keeps the step; the run's life, the
    run's parts, the schema and compare's rendering each have a module)."""
    long = {str(p.relative_to(ROOT)): n for p in modules_of(ROOT / "llm_runs")
            for n in [len(p.read_text().splitlines())] if n > 400}
    assert not long


def test_the_trainer_receives_its_parts_and_builds_none():
    """From the command line down to the step the way only goes down: `llm_runs.parts` builds, the trainer
    takes what it is handed, and the run's life (`llm_runs.lifecycle`) never reaches back into building."""
    trainer = imported_modules(ROOT / "llm_runs" / "trainer.py")
    assert "llm_runs.build" not in trainer and "llm_runs.parts" in trainer
    assert not {"llm_runs.build", "llm_runs.parts"} & imported_modules(ROOT / "llm_runs" / "lifecycle.py")


def layout_rows() -> dict[str, str]:
    """{path: description} from the README's "Layout" table."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`") and cells[0] != "path":
            rows[cells[0].split("`")[1]] = "|".join(cells[1:])
    return rows


def test_the_readme_layout_table_names_every_module_and_only_real_ones():
    rows = layout_rows()
    folders = [p for p in rows if p.endswith("/") and p.split("/")[0] in PACKAGES]
    assert {"pgpo/", "sde_lab/", "llm_runs/"} <= set(folders)
    for folder in folders:
        named = set(re.findall(r"`([\w/]+\.py)`", rows[folder]))
        real = {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
        assert named == real, f"{folder}: the table names {sorted(named - real)} that are not there, " \
                              f"and misses {sorted(real - named)}"
        sub = {p.name + "/" for p in (ROOT / folder).iterdir() if (p / "__init__.py").exists()}
        for s in sub:
            assert folder + s in rows, f"the layout table has no row for {folder + s}"
    for path in rows:
        assert (ROOT / path.rstrip("/")).exists(), f"{path} is in the layout table, not in the tree"


def test_tests_mirror_the_packages():
    for package in PACKAGES:
        assert list((ROOT / "tests" / package).glob("test_*.py")), f"tests/{package}/ holds no tests"
    loose = [p.name for p in (ROOT / "tests").glob("test_*.py")]
    assert set(loose) <= {"test_layout.py", "test_notebooks.py", "test_docs.py"}, loose


# the development notes and the published data live beside the project, not in it: a user has neither
OUTSIDE = re.compile(r"\.\./shared|\bshared/(spec|seeds|data)\b|\b(METHOD|SDE_LAB|LLM_RUNS|STYLE)\.md\b")


def test_no_file_for_users_points_outside_the_repository():
    """Only the tests and CI may read what lies beside the project (the published splits, in CI)."""
    import subprocess

    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    offenders = []
    for name in listed.stdout.splitlines():
        if name.startswith(("tests/", ".ci/")) or not (ROOT / name).is_file():
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:  # figures and other binary files
            continue
        offenders += [f"{name}:{i}: {m.group(0)}" for i, line in enumerate(text.splitlines(), 1)
                      for m in [OUTSIDE.search(line)] if m]
    assert not offenders, offenders
