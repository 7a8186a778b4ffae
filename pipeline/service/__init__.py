"""The HTTP prediction service, an entry point like the CLI: a model folder or a registry's champion behind ``POST /predict``.

It imports the core and the edge only (no Prefect, no Dask): serving starts in
the time it takes to load one model file.
"""

from __future__ import annotations
