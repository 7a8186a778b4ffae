"""Orchestration support beside the flows: the run's Prefect API, Prefect workarounds, test servers.

The science modules (features, statistics, solvers, model) never import from here.
"""
