"""Open-set figures: how well a model tells the test images of its classes ("known") from
images of none of them ("unknown", ``evaluate.py --negatives``), for any checkpoint, with or
without an ``other`` class.

A model rejects an image (calls it unknown) by a score: the top probability among the known
classes (``max_known_prob``, what ``predict.py --min-prob`` thresholds), and for a model with an
``other`` class also one minus its probability (``not_other``). For each score: the area under
the ROC curve of known (positive) against unknown, the share of unknown images still accepted
where 95% of the known ones are kept (``fpr_at_95_tpr``), and the unknown images rejected where
5% and 10% of the known ones are wrongly rejected. At the operating point of ``--min-prob``
(an image is rejected when its top class is ``other`` or its top probability is below it): the
share of each rejected, and the accuracy on the known images, an ``other`` answer or a
rejection counted wrong. The ROC arithmetic is written out here (ranks, with ties shared);
tests/test_open_set.py compares it with scikit-learn's.
"""
import math
from collections.abc import Sequence

import numpy as np

from .data.other_class import OTHER

KNOWN_REJECTED = (0.05, 0.10)  # where the unknown images rejected are read off


def scores(probs: np.ndarray, classes: Sequence[str]) -> dict[str, np.ndarray]:
    """Each image's score per rule: higher means more like the known classes."""
    classes = list(classes)
    known = [i for i, c in enumerate(classes) if c != OTHER]
    found = {"max_known_prob": probs[:, known].max(1)}
    if OTHER in classes:
        found["not_other"] = 1 - probs[:, classes.index(OTHER)]
    return found


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """The chance that a known image scores above an unknown one (ties count half): the area
    under the ROC curve, by the Mann-Whitney U statistic over shared ranks."""
    both = np.concatenate([known, unknown])
    order = np.argsort(both, kind="stable")
    ranks = np.empty(len(both))
    ranks[order] = np.arange(1, len(both) + 1)
    values = both[order]
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):  # equal scores share their mean rank
        ranks[order[s:e]] = (s + 1 + e) / 2
    u = ranks[:len(known)].sum() - len(known) * (len(known) + 1) / 2
    return float(u / (len(known) * len(unknown)))


def unknown_rejected_at(known: np.ndarray, unknown: np.ndarray, known_rejected: float) -> float:
    """The share of unknown images rejected by the strictest threshold that wrongly rejects at
    most ``known_rejected`` of the known ones (an image is rejected below the threshold)."""
    kept = math.ceil(round((1 - known_rejected) * len(known), 9))  # known images to keep
    threshold = np.sort(known)[len(known) - kept] if kept else np.inf
    return float((unknown < threshold).mean())


def score_figures(known: np.ndarray, unknown: np.ndarray) -> dict:
    if not len(known) or not len(unknown):  # nothing to tell apart
        return {"auroc": None, "fpr_at_95_tpr": None, "unknown_rejected_at_known_rejected": {
            f"{r:.2f}": None for r in KNOWN_REJECTED}}
    return {"auroc": auroc(known, unknown),
            "fpr_at_95_tpr": 1 - unknown_rejected_at(known, unknown, 0.05),
            "unknown_rejected_at_known_rejected": {
                f"{r:.2f}": unknown_rejected_at(known, unknown, r) for r in KNOWN_REJECTED}}


def rejected(probs: np.ndarray, classes: Sequence[str], min_prob: float) -> np.ndarray:
    """Which images the model calls unknown: top class ``other``, or top probability below
    ``min_prob``."""
    top = probs.argmax(1)
    out = probs.max(1) < min_prob
    if OTHER in classes:
        out |= top == list(classes).index(OTHER)
    return out


def open_set_figures(known_probs: np.ndarray, known_labels: np.ndarray,
                     unknown_probs: np.ndarray, classes: Sequence[str],
                     min_prob: float = 0.0) -> dict:
    """Every figure above for one set of unknown images; ``known_probs`` and ``known_labels``
    are the test images of the known classes (an ``other``-labelled one is not known)."""
    known_scores, unknown_scores = scores(known_probs, classes), scores(unknown_probs, classes)
    known_rejected = rejected(known_probs, classes, min_prob)
    right = (known_probs.argmax(1) == known_labels) & ~known_rejected
    return {"num_known": len(known_labels), "num_unknown": len(unknown_probs),
            "scores": {name: score_figures(known_scores[name], unknown_scores[name])
                       for name in known_scores},
            "operating_point": {
                "min_prob": min_prob,
                "known_rejected": float(known_rejected.mean()) if len(known_rejected) else None,
                "unknown_rejected": float(rejected(unknown_probs, classes, min_prob).mean())
                if len(unknown_probs) else None},
            "known_accuracy": float(right.mean()) if len(right) else None}


def tradeoff(known: np.ndarray, unknown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(known wrongly rejected, unknown rejected) at every threshold: the curve to draw."""
    thresholds = np.unique(np.concatenate([known, unknown, [np.inf]]))
    return (np.array([(known < t).mean() for t in thresholds]),
            np.array([(unknown < t).mean() for t in thresholds]))
