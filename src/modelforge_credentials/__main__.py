"""``python -m modelforge_credentials``: the ``modelforge-agent`` command."""

import sys

from .cli import main

sys.exit(main())
