"""The layers of the project, checked by walking every import (module level and inside functions).

    core                       the kernel: imports no package of the project
    engine                     the model: core only, and no Django
    tenants, ratelimit         the domain: core (and each other)
    inference                  the API and the WebSocket glue: core, engine and the domain
    pages                      the console's pages: the domain and core
    console                    the project shell (settings, urls, asgi, middleware): anything

No package but the shell imports the shell, and none imports the pages. Tests are exempt: they
may reach anything they exercise."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "engine", "tenants", "ratelimit", "inference", "pages", "console")
FRAMEWORKS = ("django", "ninja", "channels", "daphne", "django_redis", "django_prometheus")

# package -> the packages of the project it may import (itself always allowed)
ALLOWED = {
    "core": set(),
    "engine": {"core"},
    "tenants": {"core", "ratelimit"},
    "ratelimit": {"core", "tenants"},
    "inference": {"core", "engine", "tenants", "ratelimit"},
    "pages": {"core", "tenants", "ratelimit"},
    "console": set(PACKAGES),
}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name `path` imports, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def source_files(package: str) -> list[Path]:
    return [
        path
        for path in sorted((ROOT / package).rglob("*.py"))
        if "tests" not in path.relative_to(ROOT).parts and "migrations" not in path.parts
    ]


def arrows() -> dict[tuple[str, str], set[str]]:
    """(from package, to package) -> the files that draw that arrow."""
    graph: dict[tuple[str, str], set[str]] = {}
    for package in PACKAGES:
        for path in source_files(package):
            for name in imported_modules(path):
                target = name.split(".", 1)[0]
                if target in PACKAGES and target != package:
                    key = (package, target)
                    graph.setdefault(key, set()).add(str(path.relative_to(ROOT)))
    return graph


def test_the_walk_sees_every_package_and_its_imports() -> None:
    # Guards the test itself: a walk that found nothing would pass every rule below.
    for package in PACKAGES:
        assert source_files(package), package
    graph = arrows()
    assert ("inference", "engine") in graph
    assert ("console", "inference") in graph


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_the_layers_below_them(package: str) -> None:
    wrong = {
        target: sorted(files)
        for (source, target), files in arrows().items()
        if source == package and target not in ALLOWED[package]
    }
    assert wrong == {}, f"{package} imports {wrong}"


@pytest.mark.parametrize("package", ["core", "engine"])
def test_the_kernel_and_the_engine_use_no_web_framework(package: str) -> None:
    # core.clientaddr and core.jsonbody read Django's request and settings, so `core` may use
    # Django; it is checked for the rest (channels, ninja's router...) only where it applies.
    allowed = {"django", "ninja"} if package == "core" else set()
    found = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in source_files(package)
        for name in imported_modules(path)
        if name.split(".", 1)[0] in FRAMEWORKS and name.split(".", 1)[0] not in allowed
    }
    assert found == set()


def test_importing_the_engine_loads_no_django() -> None:
    # The import test above reads the source; this one runs it, so an import hidden behind a
    # string (importlib, a plugin) would show too.
    import subprocess
    import sys

    code = (
        "import sys; import engine.runtime, engine.worker, engine.remote, engine.tiny_model; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('django', 'ninja', 'channels', 'console', 'tenants', 'ratelimit', 'inference', 'pages')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


if __name__ == "__main__":  # python tests/test_layers.py: print the graph (for the docs)
    for (source, target), files in sorted(arrows().items()):
        print(f"{source:>9} -> {target:<9} {len(files)} file(s)")
