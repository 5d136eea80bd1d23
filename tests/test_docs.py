"""The documentation keeps its promises: a short README, and a reliability table that names real tests."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quick and "make test" in quick


def test_readme_links_point_at_existing_pages():
    links = re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text())
    assert links and not [link for link in links if not (ROOT / link).is_file()]


def reliability_rows() -> list[tuple[str, str]]:
    """(file, test name) for every test the reliability table names; ``::name`` alone means the cell's last file."""
    rows = []
    for line in (ROOT / "docs" / "reliability.md").read_text().splitlines():
        if not line.startswith("| ") or line.startswith("| guarantee"):
            continue
        current = None
        for ref in re.findall(r"`([^`]*(?:tests/[\w/]+\.py)?(?:::\w+)?)`", line.rsplit("|", 2)[1]):
            path, _, name = ref.partition("::")
            if path.startswith("tests/"):
                current = path
            if current and name:
                rows.append((current, name))
    return rows


def test_reliability_table_names_tests_that_exist():
    rows = reliability_rows()
    assert len(rows) > 20
    missing = [f"{f}::{n}" for f, n in rows if f"def {n}(" not in (ROOT / f).read_text()]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_ci_builds_the_docs_and_the_markers_are_registered():
    make = (ROOT / "Makefile").read_text()
    test_target = re.search(r"^test:(.*)$", make, re.M).group(1).split()
    assert "docs" in test_target and "lint" in test_target
    assert re.search(r"^docs:.*\n\t.*mkdocs build --strict", make, re.M)
    # tomllib is Python 3.11+; the project supports 3.10, so the two lines are read as text
    pytest_cfg = (ROOT / "pyproject.toml").read_text().split("[tool.pytest.ini_options]", 1)[1].split("\n[", 1)[0]
    markers = re.search(r"^markers = \[(.*)\]$", pytest_cfg, re.M).group(1)
    assert '"slow: ' in markers and '"gpu: ' in markers
    assert "--strict-markers" in re.search(r"^addopts = (.*)$", pytest_cfg, re.M).group(1)
