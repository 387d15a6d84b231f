"""Import-layering contracts, read from the source (every import, also inside functions).

Layers, lowest first; a module may import its own layer and the ones below, never above:
  core     pure, typed domain code (DataFrames, arrays, tensors in, results out): no Dagster, no MLflow
  io       MLflow access, Dagster resources and metadata helpers (DuckDB helpers are core: pure store code
           writes rows through them)
  service  Dagster assets, automation, the labelling web app, the slice filter
  entry    Dagster definitions, command lines, job runners
Domains keep to themselves where the arrow would point the wrong way (the contracts below).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cmr_assets.settings import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "cmr_assets"
LAYERS = ("core", "io", "service", "entry")
IO_MODULES = {"cmr_assets.resources", "cmr_assets.mlflow_store", "cmr_assets.promotion", "cmr_assets.metadata",
              "cmr_assets.run_context"}
ENTRY_MODULES = {"cmr_assets.definitions", "cmr_assets.cli", "cmr_assets.pipeline_runs", "cmr_assets.app.cli"}
SERVICE_PACKAGES = ("cmr_assets.automation", "cmr_assets.app", "cmr_assets.inference.slice_filter")
ORCHESTRATION = ("dagster", "dagster_duckdb", "mlflow")
# (importer prefix, imported prefix, why not)
DOMAINS = ("synthetic", "ingest", "labelling", "labels", "training", "evaluation", "inference", "automation", "app")
SHARED = {"cmr_assets.evaluation.metrics"}  # the one home of the metrics, also for validation during training
# (importer prefix, imported prefix, why not)
FORBIDDEN = [
    ("cmr_assets.labels", "cmr_assets.app", "the roster is a labelling concept (cmr_assets.labelling.roster)"),
    *[(f"cmr_assets.{domain}", "cmr_assets.evaluation", "pictures are shared (cmr_assets.figures); evaluation "
       "comes after these domains") for domain in ("synthetic", "ingest", "labelling", "labels", "training")],
    ("cmr_assets.training", "cmr_assets.ingest", "what both need lives in cmr_assets.domain"),
    ("cmr_assets.labelling", "cmr_assets.labels", "labelling collects answers (tasks, format, ingestion, simulated "
     "experts); labels turns them into labels and reads labelling, not the other way"),
    ("cmr_assets.ingest", "cmr_assets.synthetic", "the synthetic cohort is written for ingestion, which reads any "
     "DICOM; `raw_scans` names `synthetic_cohort` by its key"),
    *[(module, f"cmr_assets.{domain}", "io sits below the domains") for module in sorted(IO_MODULES)
      for domain in DOMAINS],
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    if module in ENTRY_MODULES:
        return "entry"
    if module in IO_MODULES:
        return "io"
    if module.rpartition(".")[2].endswith("assets") and module != "cmr_assets" or module.startswith(SERVICE_PACKAGES):
        return "service"
    return "core"


def imports(module: str, source: str | None = None) -> set[str]:
    """Every module `module` imports (absolute names; `from package import submodule` resolved)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return found


def test_every_module_is_read() -> None:
    assert len(MODULES) > 50 and "cmr_assets.definitions" in MODULES and "cmr_assets.domain" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module: str) -> None:
    own = LAYERS.index(layer(module))
    upward = sorted(f"{name} ({layer(name)})" for name in imports(module)
                    if name in MODULES and LAYERS.index(layer(name)) > own)
    assert not upward, f"{module} ({layer(module)}) imports a higher layer: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer(m) == "core"))
def test_the_core_runs_without_dagster_or_mlflow(module: str) -> None:
    used = sorted(name for name in imports(module) if name.split(".")[0] in ORCHESTRATION)
    assert not used, f"{module} is core code but imports {used}: move that part to an io or service module"


def test_no_cross_domain_imports_against_the_grain() -> None:
    broken = [f"{module} imports {name}: {why}"
              for module in MODULES for name in imports(module) if name not in SHARED
              for importer, imported, why in FORBIDDEN
              if (module == importer or module.startswith(importer + ".")) and name.startswith(imported)]
    assert not broken, "\n".join(broken)


def test_the_reader_sees_imports_inside_functions_and_relative_ones() -> None:
    source = "def f():\n    import dagster as dg\n    from ..training import assets\n    from . import plackett_luce\n"
    found = imports("cmr_assets.labels.aggregation", source)
    assert {"dagster", "cmr_assets.training.assets", "cmr_assets.labels.plackett_luce"} <= found
    assert layer("cmr_assets.labels.assets") == "service" and layer("cmr_assets.labels.aggregation") == "core"


def test_no_multiprocessing_pool() -> None:
    """`multiprocessing.Pool` stops its workers with SIGTERM on exit; a pipeline started in the
    background (or by a supervisor) may ignore SIGTERM, and its workers with it, and the run then
    hangs for ever. Executors (`concurrent.futures`) stop workers by message."""
    users = sorted(module for module, path in MODULES.items()
                   for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.Attribute) and node.attr == "Pool"
                   or isinstance(node, ast.alias) and node.name == "Pool")
    assert not users, f"use concurrent.futures.ProcessPoolExecutor instead of multiprocessing.Pool in {users}"
