"""What the wheel ships: the `cmr_assets` package with all its subpackages and the app's templates
and static files; not the tests, not the benchmarks (run from a source checkout)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

from cmr_assets.settings import PROJECT_ROOT

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _shipped_packages() -> set[str]:
    return set(find_packages(where=str(PROJECT_ROOT), include=SETUPTOOLS["packages"]["find"]["include"]))


def test_only_the_package_ships() -> None:
    shipped = _shipped_packages()
    assert "cmr_assets" in shipped
    assert all(name == "cmr_assets" or name.startswith("cmr_assets.") for name in shipped), sorted(shipped)


def test_every_folder_of_python_code_in_the_package_ships() -> None:
    """A folder of modules without `__init__.py` would silently be left out of the wheel."""
    package_root = PROJECT_ROOT / "cmr_assets"
    folders = {path.parent for path in package_root.rglob("*.py") if "__pycache__" not in path.parts}
    expected = {".".join(folder.relative_to(PROJECT_ROOT).parts) for folder in folders}
    assert expected <= _shipped_packages()


def test_the_app_templates_and_static_files_ship() -> None:
    data = SETUPTOOLS["package-data"]["cmr_assets.app"]
    app = PROJECT_ROOT / "cmr_assets" / "app"
    files = {path for pattern in data for path in app.glob(pattern) if path.is_file()}
    on_disk = {path for folder in ("templates", "static") for path in (app / folder).iterdir() if path.is_file()}
    assert on_disk and on_disk <= files, sorted(str(Path(p).relative_to(app)) for p in on_disk - files)
