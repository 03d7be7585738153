"""coco4: fine-tune ResNet-50 (or another registered torchvision backbone) on 4 COCO 2017
classes (bird, airplane, train, boat).

    from coco4 import Classifier          # a trained checkpoint from Python: docs/python.md

The entry scripts at the repository root are thin; everything they do lives here. Importing
coco4 imports no torch: ``Classifier`` is loaded when it is first named.
"""
__all__ = ["Classifier", "Prediction"]


def __getattr__(name: str):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'coco4' has no attribute {name!r}")
