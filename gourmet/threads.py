"""
Thread pools started and stopped with the service they belong to, for
work that would stall the reactor: the console's password hashes, ACME's
blocking HTTP calls.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.python.threadpool import ThreadPool


class ThreadPoolService(Service):
    """
    A pool of at most ``size`` threads named ``name``, made only when work
    comes, and stopped (once, however often asked) with the service: a stop
    waits for the calls under way.
    """

    def __init__(self, name: str, size: int) -> None:
        self.pool = ThreadPool(minthreads=0, maxthreads=size, name=name)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> Any:
        super().stopService()
        # A pool stopped (or never started) cannot be stopped again.
        if self.pool.started:
            self.pool.stop()
