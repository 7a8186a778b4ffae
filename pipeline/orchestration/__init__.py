"""Prefect support beside the flows that is not the run's lifecycle: notifications (``notify``).

The run's lifecycle (API, cluster, workarounds, local stack) is :mod:`pipeline.runtime`.
The science modules (features, statistics, solvers, model) never import from here.
"""
