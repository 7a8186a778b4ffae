"""Every command and Python block of the docs' Quick start (docs/tutorial.md) runs, in order, as a reader would type it.

In a file of its own, beside the README's (tests/docs/test_readme_commands.py): each takes minutes, and
``--dist loadfile`` can then give them to two processes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.docs.terminal import TUTORIAL, Session, bash_commands, python_blocks


@pytest.mark.slow
def test_tutorial_commands_run(session: Session):
    text = TUTORIAL.read_text()
    for line in bash_commands(text):
        session.run(line)
    for code in python_blocks(text):
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=session.folder, env=session.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert (session.folder / "runs" / "cv" / "metrics.json").is_file()
    assert (session.folder / "runs" / "scored" / "month=2023-03").is_dir()
