"""Classification metrics over a test list: accuracy, per-class accuracy, confusion matrix."""
import numpy as np
from sklearn.metrics import classification_report, confusion_matrix


def compute_metrics(labels, preds, classes):
    """Metrics as plain Python values (JSON-ready); confusion rows are true, columns predicted."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    cm = confusion_matrix(labels, preds, labels=list(range(len(classes))))
    support = cm.sum(1)
    per_class = {c: (float(cm[i, i] / support[i]) if support[i] else None)
                 for i, c in enumerate(classes)}
    return {"accuracy": float((labels == preds).mean()) if len(labels) else None,
            "per_class_accuracy": per_class,
            "confusion_matrix": cm.tolist(),
            "classes": list(classes),
            "num_images": int(len(labels))}


def report_text(labels, preds, classes):
    return classification_report(labels, preds, labels=list(range(len(classes))),
                                 target_names=list(classes), digits=4, zero_division=0)


def confusion_text(cm, classes):
    """The confusion matrix as an aligned table with class names (rows true, columns predicted)."""
    width = max(8, *(len(c) for c in classes)) + 1
    lines = ["true \\ pred".ljust(width) + "".join(c.rjust(width) for c in classes)]
    lines += [c.ljust(width) + "".join(str(v).rjust(width) for v in row)
              for c, row in zip(classes, cm)]
    return "\n".join(lines)


def classes_below(metrics, threshold):
    return {c: a for c, a in metrics["per_class_accuracy"].items() if a is not None and a < threshold}
