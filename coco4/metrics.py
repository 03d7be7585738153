"""One metrics path for validation during training and for evaluate.py.

``MetricAccumulator`` sums, on the logits' device, what every metric needs: the confusion
matrix, the summed negative log-likelihood and the calibration bins. Under torchrun the sums are
added up across ranks in one all-reduce; ``summary()`` then turns them into the metrics, with
scikit-learn doing the per-class arithmetic. Every scalar it reports gets a metrics.csv column
(``CSV_COLUMNS``); those where higher is better can select the best checkpoint (``SELECTABLE``).

Adding a metric: compute it in ``summary()`` from the sums (add a sum in ``update()`` if it
needs one), and give it a column in ``CSV_COLUMNS``.
"""
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import classification_report, precision_recall_fscore_support

from .distributed import DistEnv, all_reduce_tensor

ECE_BINS = 15  # Guo et al. 2017's 15 equal-width confidence bins

# metrics.csv column of each scalar metric, validation prefixed; the first two keep the names
# that runs before this metrics path wrote, so old curves and resumed runs still read
CSV_COLUMNS = {"nll": "val_loss", "accuracy": "val_acc", "macro_f1": "val_macro_f1",
               "balanced_accuracy": "val_balanced_acc",
               "min_class_accuracy": "val_min_class_acc", "ece": "val_ece"}
# metrics where higher is better, which --select-by may choose the best checkpoint by
SELECTABLE = ("accuracy", "macro_f1", "balanced_accuracy", "min_class_accuracy")


class MetricAccumulator:
    """Running sums over batches of (logits, labels); nothing is read back until ``summary``."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu"):
        self.num_classes = num_classes
        # one float64 tensor: [confusion (C*C) | nll sum | bin counts | bin confidences |
        # bin corrects], so that torchrun adds it up in a single all-reduce
        self.sums = torch.zeros(num_classes ** 2 + 1 + 3 * ECE_BINS, dtype=torch.float64,
                                device=device)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        # index_add_ into fixed-size sums: unlike bincount, nothing waits for the GPU here
        c, sums = self.num_classes, self.sums
        log_probs = logits.float().log_softmax(1)
        log_confidence, preds = log_probs.max(1)
        confidence = log_confidence.exp().double()
        ones = torch.ones_like(confidence)
        sums[:c * c].index_add_(0, labels * c + preds, ones)
        sums[c * c] -= log_probs.gather(1, labels[:, None]).sum().double()
        # bin m holds confidences in (m/M, (m+1)/M], as in the ECE's definition
        bins = (confidence * ECE_BINS).ceil().long().clamp(1, ECE_BINS) - 1
        start = c * c + 1
        for k, values in enumerate((ones, confidence, (preds == labels).double())):
            sums[start + k * ECE_BINS:start + (k + 1) * ECE_BINS].index_add_(0, bins, values)

    def all_reduce(self, env: DistEnv) -> "MetricAccumulator":
        """Add up every rank's sums (a no-op for one process); returns self."""
        self.sums = all_reduce_tensor(self.sums, env)
        return self

    def summary(self, classes: Sequence[str]) -> dict:
        """The metrics as plain Python values (JSON-ready); the confusion matrix has true
        classes as rows and predicted ones as columns. Metrics of no image are None."""
        sums = self.sums.cpu()
        c = self.num_classes
        cm = sums[:c * c].view(c, c).round().long().numpy()
        n = int(cm.sum())
        count, confidence, correct = sums[c * c + 1:].view(3, ECE_BINS).numpy()
        precision = recall = f1 = support = np.zeros(c)
        if n:  # scikit-learn refuses an empty set
            precision, recall, f1, support = precision_recall_fscore_support(
                *_expand(cm), labels=list(range(c)), zero_division=0)
        present = support > 0
        per_class = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                            "f1": float(f1[i]), "support": int(support[i])}
                     for i, name in enumerate(classes)}
        return {
            "accuracy": float(np.trace(cm) / n) if n else None,
            "per_class_accuracy": {name: float(recall[i]) if present[i] else None
                                   for i, name in enumerate(classes)},
            "confusion_matrix": cm.tolist(),
            "classes": list(classes),
            "num_images": n,
            "nll": float(sums[c * c] / n) if n else None,
            "macro_f1": float(f1.mean()) if n else None,
            "balanced_accuracy": float(recall[present].mean()) if n else None,
            "min_class_accuracy": float(recall[present].min()) if n else None,
            "ece": float(np.abs(confidence - correct).sum() / n) if n else None,
            "per_class": per_class,
            "reliability": _reliability(count, confidence, correct),
        }


def _reliability(count, confidence, correct) -> dict:
    """Per confidence bin: how many images, their mean confidence and their accuracy (None in
    an empty bin): the points of a reliability diagram."""
    mean = lambda sums: [float(s / k) if k else None for s, k in zip(sums, count)]
    return {"count": [int(k) for k in count], "confidence": mean(confidence),
            "accuracy": mean(correct)}


def _expand(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) that have confusion matrix ``cm``, for scikit-learn."""
    c = len(cm)
    true = np.repeat(np.repeat(np.arange(c), c), cm.flatten())
    pred = np.repeat(np.tile(np.arange(c), c), cm.flatten())
    return true, pred


def csv_row(summary: dict) -> dict:
    """The validation columns of a metrics.csv row, from a ``summary()``."""
    return {column: summary[name] for name, column in CSV_COLUMNS.items()}


def report_text(cm: np.ndarray | list, classes: Sequence[str]) -> str:
    """scikit-learn's classification report (precision, recall, F1 per class)."""
    y_true, y_pred = _expand(np.asarray(cm))
    return classification_report(y_true, y_pred, labels=list(range(len(classes))),
                                 target_names=list(classes), digits=4, zero_division=0)


def confusion_text(cm: np.ndarray | list, classes: Sequence[str]) -> str:
    """The confusion matrix as an aligned table with class names (rows true, columns predicted)."""
    width = max(8, *(len(c) for c in classes)) + 1
    lines = ["true \\ pred".ljust(width) + "".join(c.rjust(width) for c in classes)]
    lines += [c.ljust(width) + "".join(str(v).rjust(width) for v in row)
              for c, row in zip(classes, cm)]
    return "\n".join(lines)


def classes_below(summary: dict, threshold: float) -> dict:
    """The classes whose accuracy is below ``threshold``, and those with no images (None):
    a class never seen is not known to pass."""
    return {c: a for c, a in summary["per_class_accuracy"].items()
            if a is None or a < threshold}
