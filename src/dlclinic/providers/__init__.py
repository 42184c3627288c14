"""Evidence providers shared by several challenges, cached on :class:`~dlclinic.core.evidence.Evidence`.

Each provider computes one expensive, shared measurement (the short monitored training run,
the compression sweep, …) once per checkup through ``Evidence.memo``/``Evidence.cached``;
no module-level caches.
"""
