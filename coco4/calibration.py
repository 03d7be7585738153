"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks"): one
scalar T divides the logits before the softmax, fitted on the held-out validation logits by
minimising the negative log-likelihood with LBFGS. Dividing by T changes no prediction (the
argmax stays), only how confident the probabilities are: T > 1 softens an overconfident model.

Training fits T after every validation and stores it in each checkpoint it writes; evaluate.py,
visualize.py, predict.py and export.py apply it unless told ``--no-calibration``. A checkpoint
without one (older files, the original project's) is used as it is: T = 1."""

import torch

from .errors import Coco4Error

# a fit at or beyond these has found a degenerate set, not a calibration (labels that ignore
# the logits drive T up): then T = 1, as for a set with no mistake, where the NLL keeps falling
# as T shrinks and a tiny T would push every later prediction, wrong ones too, to certainty
T_RANGE = (0.05, 20.0)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T minimising the mean NLL of ``softmax(logits / T)`` on ``labels``; 1 where there
    is no such minimum (no images, every one right) or it lies outside ``T_RANGE``."""
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    if len(labels) == 0 or bool((logits.argmax(1) == labels).all()):
        return 1.0  # no images, or no mistake: then the NLL falls without end as T shrinks
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) > 0
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def nll():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(nll)
    t = float(log_t.detach().exp())
    return t if T_RANGE[0] < t < T_RANGE[1] else 1.0


def stored_temperature(ckpt: dict, source: str) -> float:
    """The checkpoint's temperature, 1.0 when it has none; a bad value is refused."""
    t = ckpt.get("temperature")
    if t is None:
        return 1.0
    # only the fit writes it, within T_RANGE: 1e-300 would make every probability NaN, 1e308
    # every one 1/classes, and both pass a check for a positive number
    if isinstance(t, bool) or not isinstance(t, (int, float)) or \
            not T_RANGE[0] <= t <= T_RANGE[1]:
        raise Coco4Error(f"{source} holds temperature {t!r}, not a number from {T_RANGE[0]:g} "
                         f"to {T_RANGE[1]:g} as the fit writes: the file is damaged or not from "
                         "coco4; use another checkpoint")
    return float(t)
