"""
``twistd gourmet``: the command-line options, and the service they make
(built by :mod:`gourmet.service`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from twisted.python import usage

from gourmet._twisted.check import TwistedMismatch, check_twisted
from gourmet.collector import settle
from gourmet.config.load import ConfigError, load_config
from gourmet.config.model import DEFAULT_CONFIG_PATH
from gourmet.logs import foreground_observer

if TYPE_CHECKING:
    from gourmet.service import GourmetService


class Options(usage.Options):
    """
    ``twistd gourmet``'s options: where the configuration is.
    """

    synopsis = "[options]"
    longdesc = "Run Gourmet, an HTTP load balancer, with a TOML configuration."
    optParameters = [
        ["config", "c", DEFAULT_CONFIG_PATH, "The configuration file to load."],
    ]

    def opt_version(self) -> None:
        """
        Display Gourmet's version, and Twisted's, and exit.
        """
        from gourmet.cli import version_line

        sys.stdout.write(version_line() + "\n")
        raise SystemExit(0)


def makeService(options: Options) -> GourmetService:
    """
    The service for the configuration ``options`` name; a bad one (or a
    Twisted Gourmet cannot run on) exits with one line.
    """
    from twisted.internet import reactor

    try:
        # Before the fenced modules are imported: a private name gone from
        # Twisted is one clear line, not an ImportError's traceback.
        check_twisted(log_fallbacks=False)
        from gourmet.service import build_service
        from gourmet.signals import SignalHandlers

        config = load_config(options["config"])
        service = build_service(
            config, reactor, foreground_observer(getattr(options, "parent", None))
        )
    except (ConfigError, TwistedMismatch) as error:
        # One line and a non-zero exit: twistd would print its whole usage
        # text before a UsageError.
        raise SystemExit(f"gourmet: {error}") from None
    # Once the reactor runs, after it has installed its own handlers.
    reactor.callWhenRunning(SignalHandlers(reactor, service).install)
    # What start-up made is kept out of the collector's way, now, before
    # anything listens: a full collection here delays no client.
    settle()
    return service
