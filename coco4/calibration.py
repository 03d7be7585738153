"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one
scalar T divides the logits before the softmax, fitted on the held-out validation logits by
minimising the negative log-likelihood with LBFGS. Dividing by T changes no prediction (the
argmax stays), only how confident the probabilities are: T > 1 softens an overconfident model.

Training fits T after every validation and stores it in each checkpoint it writes; evaluate.py,
visualize.py, predict.py and export.py apply it unless told ``--no-calibration``. A checkpoint
without one (older files, the original project's) is used as it is: T = 1."""
import math

import torch

from .cli import Coco4Error

# beyond these the fit has found a degenerate set (every image right, or labels that ignore
# the logits), not a calibration: T is kept inside them
T_RANGE = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimising the mean NLL of ``softmax(logits / T)`` on ``labels``; 1 for no images."""
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) > 0
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def nll():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(nll)
    t = float(log_t.detach().exp())
    return min(max(t, T_RANGE[0]), T_RANGE[1]) if math.isfinite(t) else 1.0


def stored_temperature(ckpt: dict, source: str) -> float:
    """The checkpoint's temperature, 1.0 when it has none; a bad value is refused."""
    t = ckpt.get("temperature")
    if t is None:
        return 1.0
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < math.inf:
        raise Coco4Error(f"{source} holds temperature {t!r}, not a positive number: the file "
                         "is damaged or not from coco4; use another checkpoint")
    return float(t)
