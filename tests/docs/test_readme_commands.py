"""Every command of README.md and of the docs' Quick start runs, in order, as a reader would type it.

The ```bash blocks are extracted and run line by line in a fresh folder, on small
generated months, against the session's Prefect API on 127.0.0.1 (so each run
skips starting one). What is changed to make them testable is listed in
:data:`SUBSTITUTIONS` and :data:`SKIPPED`, each with its reason; a line that
matches neither runs exactly as written. Servers (``serve``, ``deploy``) run in
the background on 127.0.0.1 until the block sequence ends. No network.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.edge.ports import free_port
from pipeline.runtime.stack_record import RECORD

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TUTORIAL = ROOT / "docs" / "tutorial.md"
ROWS = "20000"

#: Lines not run, and why.
SKIPPED = {
    "make test": "the test suite this test is part of",
    "make setup && . .venv/bin/activate": "the suite runs in the set-up .venv, whose bin/ is first on PATH here",
}
#: (pattern, replacement, why) applied to every line before it runs.
SUBSTITUTIONS = (
    (r"^make demo\b.*$", f"taxi-pipeline demo --rows {ROWS}", "what `make demo` runs after the set-up, at a small scale"),
    (r"--rows \d+", f"--rows {ROWS}", "small months: the commands, not the scale, are under test"),
)
#: Commands that serve until stopped: started in the background, checked, stopped at the end.
SERVERS = ("taxi-pipeline serve", "taxi-pipeline deploy")


def bash_commands(markdown: str) -> list[str]:
    """The command lines of every ```bash block, continuation lines joined, comments and blank lines dropped."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.M | re.S)


def _command(line: str) -> str:
    """The line without a trailing comment (two spaces, then #)."""
    return line.split("  #")[0].strip()


def _prepared(line: str) -> str:
    for pattern, replacement, _ in SUBSTITUTIONS:
        line = re.sub(pattern, replacement, line)
    return line


class Session:
    """A reader's terminal: a folder, an environment, and the servers started from it."""

    def __init__(self, folder: Path, api_url: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.api_url = api_url
        venv_bin = str(Path(sys.executable).parent)
        self.env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "PREFECT_API_URL": api_url}
        self.env.pop("DASK_SCHEDULER_ADDRESS", None)
        # `taxi-pipeline up` records its stack in PREFECT_HOME and listens on a port: this terminal's own, never another's
        self.env["PREFECT_HOME"] = str(folder / "prefect-home")
        self.stack_port = free_port()
        self.servers: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.ran: list[str] = []

    def run(self, line: str) -> None:
        if _command(line) in SKIPPED:
            return
        line = _prepared(line).replace("--port 8000", f"--port {self.port}").replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        line = re.sub(r"^taxi-pipeline up\b", f"taxi-pipeline up --port {self.stack_port}", line)
        if line.startswith(SERVERS):
            self._serve(line)
        else:
            done = subprocess.run(["bash", "-c", line], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=240)
            assert done.returncode == 0, f"{line!r} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            if line.startswith("curl"):
                assert '"minutes"' in done.stdout, done.stdout
        self.ran.append(line)

    def _serve(self, line: str) -> None:
        log = open(self.folder / f"server-{len(self.servers)}.log", "wb")  # noqa: SIM115  (closed with the process)
        process = subprocess.Popen(shlex.split(line, comments=True), cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.servers.append((line, process))
        if line.startswith("taxi-pipeline serve"):
            self._wait(process, line, f"http://127.0.0.1:{self.port}/health")
        else:
            name = re.search(r"--name (\S+)", line)
            self._wait(process, line, f"{self.api_url}/deployments/name/retrain-trip-duration/{name.group(1) if name else 'monthly'}")

    def _wait(self, process: subprocess.Popen[bytes], line: str, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert process.poll() is None, f"{line!r} exited {process.returncode}: {self._log(process)}"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        pytest.fail(f"{line!r}: {url} did not answer in {timeout:.0f} s: {self._log(process)}")

    def _log(self, process: subprocess.Popen[bytes]) -> str:
        index = [p for _, p in self.servers].index(process)
        return (self.folder / f"server-{index}.log").read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if (Path(self.env["PREFECT_HOME"]) / RECORD).exists():  # `up` ran, and a failure came before `down`
            subprocess.run(["taxi-pipeline", "down"], cwd=self.folder, env=self.env, capture_output=True, timeout=120)
        for _, process in self.servers:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)  # Ctrl-C, as a reader stops them
        for _, process in self.servers:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def session(tmp_path: Path, prefect_api_url: str) -> Iterator[Session]:
    terminal = Session(tmp_path, prefect_api_url)
    try:
        yield terminal
    finally:
        terminal.close()


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
        assert any(_command(line) == skipped for line in lines), skipped


@pytest.mark.slow
def test_readme_commands_run(session: Session):
    for line in bash_commands(README.read_text()):
        session.run(line)
    assert {"taxi-pipeline serve", "taxi-pipeline deploy", "taxi-pipeline predict", "taxi-pipeline retrain"} <= {
        " ".join(line.split()[:2]) for line in session.ran
    }
    assert (session.folder / "runs" / "first" / "metrics.json").is_file()
    assert (session.folder / "runs" / "scored" / "report.json").is_file()


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
