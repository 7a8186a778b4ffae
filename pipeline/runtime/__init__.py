"""The run's lifecycle in one package: what starts, points and stops the Prefect API and the Dask cluster of a run.

Its modules: the run's Prefect API (``prefect_api``, ``prefect_server``), the version-guarded
Prefect workarounds (``prefect_patches``), the flow's cluster and task runner (``cluster_runner``,
``plugins``, ``runner``), Ctrl-C and terminal logs (``interrupts``, ``terminal_logs``), the local
stack of ``taxi-pipeline up`` (``local_stack``, ``stack_process``, ``stack_relay``, ``stack_record``)
and a throwaway API for tests and benchmarks (``testing``). The science modules never import from here.
"""
