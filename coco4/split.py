"""The validation split held out from the train list, for model selection and the LR schedule.

val2017 is the test set: choosing the checkpoint on it (as the original did) would report a
number tuned on the very images it claims to generalise to.
"""
import numpy as np

from .errors import Coco4Error


def stratified_split(labels, classes, val_fraction, seed):
    """Indices (train, val): ``val_fraction`` of each class, at least one image, chosen by ``seed``."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c, name in enumerate(classes):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            raise Coco4Error(f"class {name!r} (label {c}) has no training image; check the list "
                             "or the --classes given to annotation_prepare.py")
        n_val = int(round(len(members) * val_fraction))
        if n_val == 0 or n_val == len(members):
            raise Coco4Error(f"--val-fraction {val_fraction} leaves class {name!r} with "
                             f"{n_val} of its {len(members)} images for validation; "
                             "each class needs at least one image on each side")
        members = rng.permutation(members)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return np.sort(train), np.sort(val)
