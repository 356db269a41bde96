"""Environment of Triton's python backend stub, set up once for every model.py (stdlib only).

The stub runs its interpreter isolated (``-I``), which drops ``PYTHONPATH``; the launcher names the
virtualenv site dirs and the repository root there, so each is added as a site dir (``.pth`` files apply,
which makes the editable install visible) ahead of the system dist-packages. Hub access is switched off:
weights only ever come from local files.
"""

from __future__ import annotations

import os
import site
import sys


def prepare() -> None:
    before = list(sys.path)
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and entry not in before and os.path.isdir(entry):
            site.addsitedir(entry)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
