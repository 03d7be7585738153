"""``--compile``: torch.compile turns the model into generated C++ (on the CPU) or Triton
kernels (on a GPU), and needs a working C++ compiler, and Triton on a GPU. Without them it fails
with a page of traceback at the first step, after the data is prepared; here that becomes one
line, checked up front where it can be and caught at the first compiled step where it cannot."""
import importlib.util
import os
import shutil
import sys

import torch

from .errors import Coco4Error, first_line

INSTEAD = "or train without --compile"


def check_compile_tools(device: torch.device) -> None:
    """Raise before any work when a tool the compiler is known to need is missing."""
    # the compiler inductor looks for first (CXX, else its platform default)
    cxx = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(cxx) is None:
        raise Coco4Error(f"--compile needs a C++ compiler, and {cxx!r} was not found; install "
                         f"one (e.g. apt install g++; the CXX variable names another), {INSTEAD}")
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise Coco4Error("--compile on a GPU needs Triton, which is not installed; install the "
                         f"triton that matches your torch (pip install triton), {INSTEAD}")


def compile_errors() -> tuple[type[BaseException], ...]:
    """What a failed compilation raises: BackendCompilerFailed, or InductorError in newer torch
    (looked up, since the names moved between versions)."""
    import torch._dynamo.exc
    import torch._inductor.exc

    found = (getattr(torch._dynamo.exc, "BackendCompilerFailed", None),
             getattr(torch._inductor.exc, "InductorError", None))
    return tuple(e for e in found if e is not None)


def compile_failed(error: BaseException) -> Coco4Error:
    return Coco4Error(f"--compile failed: {first_line(error)}; check that the C++ compiler (the "
                      f"CXX variable, else g++) and, on a GPU, Triton work, {INSTEAD}")
