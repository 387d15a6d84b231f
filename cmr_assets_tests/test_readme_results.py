"""Every results table in the README is rendered from its committed file under docs/results/."""

import json
import re

from cmr_assets.evaluation.results_record import readme_block
from cmr_assets.settings import PROJECT_ROOT

MARKER = re.compile(r"<!-- results: ([a-z0-9][a-z0-9_-]*) -->")


def test_every_readme_results_table_equals_the_table_rendered_from_its_file():
    readme = (PROJECT_ROOT / "README.md").read_text()
    names = MARKER.findall(readme)
    assert names, "the README shows no recorded results table"
    for name in names:
        path = PROJECT_ROOT / "docs" / "results" / f"{name}.json"
        assert path.exists(), f"README results table {name!r} has no file {path}"
        assert readme_block(json.loads(path.read_text())) in readme, (
            f"README table {name!r} differs from {path.name}; paste the block `cmr-assets record-results` printed")
