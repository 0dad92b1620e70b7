"""
Where Gourmet's own log (errors, servers going down and coming back) goes
when ``twistd`` runs it in the foreground: standard error, so that the
access log has standard output to itself.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from twisted.logger import ILogObserver, textFileLogObserver


def foreground_observer(twistd_options: Optional[Any]) -> Optional[ILogObserver]:
    """
    The log observer Gourmet wants for ``twistd -n`` with no ``--logfile``
    or ``--logger`` given, or None to leave twistd's choice alone.

    :param twistd_options: twistd's own options (the ``parent`` of the
        plugin's options), or None outside twistd.
    """
    if twistd_options is None:
        return None
    if not twistd_options.get("nodaemon") or twistd_options.get("logfile"):
        return None
    if twistd_options.get("logger"):
        return None
    return textFileLogObserver(sys.stderr)
