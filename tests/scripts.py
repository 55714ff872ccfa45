"""Run a repository script (``bench/``, ``examples/``) inside the test process.

``run_script(path, *args)`` returns what ``python path args`` prints, without starting a fresh interpreter: importing
torch and Diffusers again costs about 15 s per script on the 2-core CI machine. Use a subprocess instead where the
script's own environment is the point (the examples run as a user runs them) or where it must start clean.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(path: str | Path, *args) -> str:
    """Run ``path`` as ``__main__`` with ``sys.argv = [path, *args]``; return its stdout. ``sys.argv``, ``sys.path``,
    the whole environment and torch's CPU thread count are restored afterwards (scripts set
    ``RADIAL_TRITON_AUTOTUNE``, ``torch.set_num_threads``). A non-zero ``SystemExit`` fails with the output's tail."""
    import torch

    path = Path(path)
    saved_argv, saved_path = sys.argv, list(sys.path)
    saved_env, saved_threads = dict(os.environ), torch.get_num_threads()
    sys.argv = [str(path), *map(str, args)]
    sys.path.insert(0, str(path.parent))  # what `python path` puts first: the script's own folder (examples/_sizes.py)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise AssertionError(f"{path.name} {' '.join(sys.argv[1:])} exited with {exit_.code!r}:\n"
                                 f"{out.getvalue()[-3000:]}") from None
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(saved_threads)
    return out.getvalue()
