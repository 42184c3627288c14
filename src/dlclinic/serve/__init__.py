"""Serving a classifier over HTTP, with a prediction log and live drift windows.

* :mod:`~dlclinic.serve.app` — :func:`create_app`: the FastAPI application
  (``/predict``, ``/feedback``, ``/health``, ``/ready``, ``/metrics``, ``/dashboard``);
* :mod:`~dlclinic.serve.batching` — :class:`DynamicBatcher`: dynamic batching with a
  bounded queue;
* :mod:`~dlclinic.serve.backends` — torch and ONNX Runtime backends;
* :mod:`~dlclinic.serve.store` — :class:`PredictionStore`: the prediction log through
  SQLAlchemy (SQLite in WAL mode by default, PostgreSQL by URL), one writer thread.

FastAPI, uvicorn, SQLAlchemy and prometheus_client are imported by the submodules
(``pip install 'dlclinic[serve]'``); importing this package imports none of them.
"""

from __future__ import annotations

__all__: list[str] = []
