"""
``python -m gourmet.passwords``: make a password hash for a user of the
admin console (see :mod:`gourmet.admin.passwords`, where the work is).
"""

from __future__ import annotations

import sys

from gourmet.admin.passwords import main

if __name__ == "__main__":
    sys.exit(main())
