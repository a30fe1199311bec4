"""Put this folder first on PYTHONPATH to run Python as on a machine without Triton (macOS, Windows).

`sys.modules["triton"] = None` is Python's own way to make a package absent: `import triton` (and any
`triton.*`) raises ModuleNotFoundError and `importlib.util.find_spec("triton")` returns None, for labkit and for
torch alike, while the installed files stay where they are. Child processes (notebook kernels) inherit
PYTHONPATH, so they see no Triton either.
"""

import sys

for _name in ("triton", "triton.language", "triton.testing"):
    sys.modules[_name] = None
