"""The host name Airflow records on task instances (``[core] hostname_callable``).

Several Celery workers on one host all report that host's name, so a task instance cannot
tell which worker ran it. Each worker of the local production stack (deploy/local) sets
``RECSYS_WORKER_HOSTNAME`` to its own name; without it (containers, Kubernetes pods: one
worker per host) this is Airflow's default, the fully qualified domain name.
"""

from __future__ import annotations

import os
import socket


def get_hostname() -> str:
    """``RECSYS_WORKER_HOSTNAME`` when set, else ``socket.getfqdn()``."""
    return os.environ.get("RECSYS_WORKER_HOSTNAME") or socket.getfqdn()
