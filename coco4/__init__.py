"""coco4: fine-tune ResNet-50 (or another registered torchvision backbone) on 4 COCO 2017
classes (bird, airplane, train, boat).

    from coco4 import Classifier          # a trained checkpoint from Python: docs/python.md

The entry scripts at the repository root are thin; everything they do lives here. Importing
coco4 imports no torch: ``Classifier`` is loaded when it is first named.
"""
__all__ = ["Classifier", "Prediction"]


def __getattr__(name: str):
    # PEP 562: loaded on first use, by name, so that the package itself depends on none of
    # its modules (each module's import of the package runs this file, and nothing more)
    if name in __all__:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module 'coco4' has no attribute {name!r}")
