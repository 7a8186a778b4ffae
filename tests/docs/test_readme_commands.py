"""Every command of README.md runs, in order, as a reader would type it.

The ```bash blocks are extracted and run line by line in a fresh folder, on small
generated months, against the session's Prefect API on 127.0.0.1 (so each run
skips starting one), in the terminal of :mod:`tests.docs.terminal`, which lists
what is changed to make them testable. The Quick start's commands:
tests/docs/test_tutorial_commands.py.
"""

from __future__ import annotations

import re

import pytest

from tests.docs.terminal import README, ROOT, SKIPPED, TUTORIAL, Session, bash_commands, without_comment


def test_the_readme_keeps_its_shape():
    """At most 150 lines, the two commands first, and every relative link lands on a file."""
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 150
    assert lines[:4] == [
        "```bash",
        "make demo   # set up .venv, generate 3 months of 3M trips, train on a LocalCluster",
        "make test   # set up .venv, run the test suite",
        "```",
    ]
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to {target}, which does not exist"


def test_the_skipped_lines_are_still_there():
    """A skip that no longer matches a line of the README or the Quick start is stale: remove it."""
    lines = bash_commands(README.read_text()) + bash_commands(TUTORIAL.read_text())
    for skipped in SKIPPED:
        assert any(without_comment(line) == skipped for line in lines), skipped


@pytest.mark.slow
def test_readme_commands_run(session: Session):
    for line in bash_commands(README.read_text()):
        session.run(line)
    assert {"taxi-pipeline serve", "taxi-pipeline deploy", "taxi-pipeline predict", "taxi-pipeline retrain"} <= {
        " ".join(line.split()[:2]) for line in session.ran
    }
    assert (session.folder / "runs" / "first" / "metrics.json").is_file()
    assert (session.folder / "runs" / "scored" / "report.json").is_file()
