"""Screenshots of the built site in headless Chromium: ``python docs/screenshots.py SITE_DIR OUT_DIR``.

Serves SITE_DIR (``mkdocs build`` output) on 127.0.0.1 and has Chromium (Debian's
``chromium`` package) render the home page, the Quick start and the CLI reference
to PNG files in OUT_DIR, each in a fresh profile, with no network beyond 127.0.0.1.
Exit code 2 when Chromium is not installed.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

#: (page, file name, window height): tall enough to show what a reader sees first and a little more.
PAGES = (
    ("", "home.png", 1400),
    ("tutorial/", "tutorial.png", 1800),
    ("reference/cli/", "cli-reference.png", 1800),
)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str | None:
    """The Chromium binary on PATH, if any."""
    return next((found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # the requests are not the point
        pass


def screenshots(site: Path, out: Path, browser: str, width: int = 1280) -> list[Path]:
    """Serve ``site`` on 127.0.0.1 and write one PNG per page of :data:`PAGES` into ``out``."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out.mkdir(parents=True, exist_ok=True)
    written = []
    try:
        for page, name, height in PAGES:
            target = out / name
            target.unlink(missing_ok=True)
            with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
                subprocess.run(
                    [
                        browser,
                        *FLAGS,
                        f"--user-data-dir={profile}",
                        f"--window-size={width},{height}",
                        f"--screenshot={target}",
                        f"http://127.0.0.1:{server.server_port}/{page}",
                    ],
                    check=True,
                    timeout=120,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            if not target.is_file():
                raise RuntimeError(f"chromium wrote no screenshot of /{page}")
            written.append(target)
    finally:
        server.shutdown()
    return written


def main() -> int:
    site, out = Path(sys.argv[1]), Path(sys.argv[2])
    browser = chromium()
    if browser is None:
        print("error: chromium is not installed (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    if not (site / "index.html").is_file():
        print(f"error: {site}/index.html not found: build the site first (make docs)", file=sys.stderr)
        return 2
    for path in screenshots(site, out, browser):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
