"""Optional parts (pyproject's extras): a missing one is named with the extra that installs it."""
from __future__ import annotations

import importlib


def require(module: str, extra: str, what: str):
    """Import `module`, or raise ImportError saying `what` needs it and `pip install "unimm[extra]"`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f'{what} needs {module.split(".")[0]}, which is not installed: '
                          f'pip install "unimm[{extra}]"') from e
