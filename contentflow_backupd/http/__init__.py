"""The daemon's HTTP listener: ``/metrics``, ``/livez``, ``/readyz``, ``/healthz`` (``server.py``)."""
