"""voxwire server: gRPC streaming speech recognition and synthesis for voice assistants."""

import os

# CTranslate2 and PyTorch each bring an OpenMP runtime; with both in one process, passive waiting was
# 4-30 % faster (busy-waiting threads of one runtime take the cores from the other). Set here, before
# either is imported; a value from the environment is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["__version__"]
