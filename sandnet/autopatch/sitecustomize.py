"""Patch the socket module with sandnet before a program under ``sandnet run`` starts.

Python imports the first sitecustomize module on sys.path at start-up, and
``sandnet run`` puts this directory first on PYTHONPATH. This module then runs
the sitecustomize that it shadows (Debian ships one), if there is one.
"""

import importlib.machinery
import importlib.util
import os
import sys

try:
    import sandnet
except ImportError as error:
    # Running on without the patch would let the program use the host's
    # network, so stop. SystemExit this early is a fatal error with a
    # traceback, so exit directly with one line instead.
    print(f"sandnet run: {sys.executable} cannot import sandnet ({error}); "
          "run the program with the Python that sandnet is installed in", file=sys.stderr, flush=True)
    os._exit(1)

sandnet.patch()

_autopatch_dir = os.path.dirname(os.path.abspath(__file__))
_path = [entry for entry in sys.path if os.path.abspath(entry or ".") != _autopatch_dir]
_spec = importlib.machinery.PathFinder.find_spec("sitecustomize", _path)
if _spec is not None and _spec.loader is not None:
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
