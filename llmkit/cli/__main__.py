"""``python -m llmkit.cli`` is the same as the ``llmkit`` console script."""

import sys

from llmkit.cli import main

sys.exit(main())
