"""A reader's terminal for the docs' tests: the ```bash blocks of a page, and a folder and environment to run them in.

Every line runs exactly as written unless :data:`SUBSTITUTIONS`, :data:`ONE_WORKER` or :data:`SKIPPED` say otherwise,
each with its reason. Servers (``serve``, ``deploy``) run in the background on 127.0.0.1 until the page's commands end. No network.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
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
#: Commands that start a Dask cluster run it with one worker (a reader's has one per core): each further worker costs
#: ~4.5 s of CPU a command, and the commands, not the cluster's size, are under test (two-worker runs: tests/flows).
#: Not a run while the local stack is up: given --n-workers, it would start a cluster of its own instead of using the stack.
ONE_WORKER = ("taxi-pipeline demo", "taxi-pipeline train", "taxi-pipeline retrain", "taxi-pipeline predict", "taxi-pipeline up")


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


def without_comment(line: str) -> str:
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
        self.stack_up = False  # between `taxi-pipeline up` and `taxi-pipeline down`

    def run(self, line: str) -> None:
        if without_comment(line) in SKIPPED:
            return
        line = _prepared(line).replace("--port 8000", f"--port {self.port}").replace("127.0.0.1:8000", f"127.0.0.1:{self.port}")
        line = re.sub(r"^taxi-pipeline up\b", f"taxi-pipeline up --port {self.stack_port}", line)
        if line.startswith(ONE_WORKER) and (line.startswith("taxi-pipeline up") or not self.stack_up):
            command, subcommand, rest = line.split(" ", 2)
            line = f"{command} {subcommand} --n-workers 1 {rest}"
        if line.startswith(SERVERS):
            self._serve(line)
        else:
            done = subprocess.run(["bash", "-c", line], cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=240)
            assert done.returncode == 0, f"{line!r} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            if line.startswith("curl"):
                assert '"minutes"' in done.stdout, done.stdout
        self.ran.append(line)
        if line.startswith(("taxi-pipeline up", "taxi-pipeline down")):
            self.stack_up = line.startswith("taxi-pipeline up")

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
