"""README "Differences from semantic-id 0.2.5": every line names a test, and that test exists."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_difference_names_a_test_that_exists():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Differences from semantic-id 0.2.5", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert len(rows) >= 10
    for row in rows:
        tests = re.findall(r"`([\w/]+\.py)::(\w+)`", row.rsplit("|", 2)[-2])
        assert tests, f"no test named in: {row[:80]}"
        for file, name in tests:
            paths = list((ROOT / "tests").rglob(file))
            assert len(paths) == 1, f"{file}: {paths}"
            assert re.search(rf"^def {name}\(", paths[0].read_text(encoding="utf-8"), re.M), f"{file}::{name}"
