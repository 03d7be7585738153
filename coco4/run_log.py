"""What a training run tells the user: the config at start, a line per epoch, metrics.csv and
TensorBoard events. Only rank 0 writes; the other ranks' RunLog does nothing."""
import csv
import io
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from .config import TrainConfig
from .distributed import DistEnv
from .errors import Coco4Error
from .fileio import atomic_write_text
from .inference import Amp
from .metrics import CSV_COLUMNS, csv_row
from .training import EpochState

# the columns earlier coco4 versions wrote keep their positions; further validation metrics follow
_FIRST = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds",
          "images_per_s")
COLUMNS = _FIRST + tuple(c for c in CSV_COLUMNS.values() if c not in _FIRST)


class RunLog:
    def __init__(self, output_dir: str | Path, enabled: bool, resumed: bool) -> None:
        self.dir, self.enabled, self.resumed = Path(output_dir), enabled, resumed
        self._tb = None

    def info(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def config(self, cfg: TrainConfig, device: torch.device, env: DistEnv) -> None:
        if not self.enabled:
            return
        # amp names what runs: --amp is on by default but does nothing outside CUDA (fp32 there)
        dtype = Amp.for_device(device, cfg.amp).dtype
        shown = {**cfg.to_dict(), "amp": str(dtype).removeprefix("torch.") if dtype else "off"}
        pairs = " ".join(f"{k}={v}" for k, v in shown.items())
        self.info(f"{'resuming' if self.resumed else 'training'} on {device}"
                  f"{f' x{env.world} processes' if env.enabled else ''}: {pairs}")

    def epoch(self, history: list[dict], best_epoch: int) -> None:
        """The line for the epoch just done (``history[-1]``), and the whole metrics.csv."""
        if not self.enabled:
            return
        row = history[-1]
        mark = " *best*" if best_epoch == row["epoch"] else ""
        self.info(f"epoch {row['epoch']:3d} | train loss {row['train_loss']:.4f} acc "
                  f"{row['train_acc']:.4f} | val loss {row['val_loss']:.4f} acc "
                  f"{row['val_acc']:.4f} | lr {row['lr']:.2e} | {row['seconds']:.1f}s "
                  f"{row['images_per_s']:.0f} img/s{mark}")
        write_metrics_csv(self.dir / "metrics.csv", history)
        self._tensorboard(row, len(history))

    def _tensorboard(self, row, first_epoch):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

            # purge_step drops events a resumed run is about to write again
            self._tb = SummaryWriter(self.dir / "tensorboard",
                                     purge_step=first_epoch if self.resumed else None)
        for key in COLUMNS[1:]:
            if row.get(key) is not None:
                self._tb.add_scalar(key, row[key], row["epoch"])
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def epoch_row(state: EpochState, trained: list[float], val: dict, lr: float) -> dict:
    """An epoch's metrics.csv row: its training figures (``trained``: the summed loss, the
    images right and the images seen, over every rank), the validation ``summary()``, the LR
    it trained at, and its time and throughput (images, not steps)."""
    loss_sum, correct, count = trained
    return {"epoch": state.epoch + 1, "train_loss": loss_sum / count, "train_acc": correct / count,
            **csv_row(val), "lr": lr, "seconds": state.seconds,
            "images_per_s": count / max(state.seconds, 1e-9)}


def write_metrics_csv(path: str | Path, rows: Sequence[dict]) -> None:
    """The whole history each time, atomically: a resumed run rewrites what it re-did. A
    column that an older coco4 did not write, in a run it started, stays empty."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({k: row.get(k) for k in COLUMNS} for row in rows)
    atomic_write_text(path, out.getvalue())


def read_metrics_csv(path: str | Path) -> list[dict[str, float | None]]:
    """The rows of a metrics.csv as numbers (None where empty); anything else that train.py
    did not write is a one-line error."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{k: float(v) if v else None for k, v in row.items() if k is not None}
                    for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as e:
        raise Coco4Error(f"{path} is not a metrics.csv written by train.py ({e})") from None
    missing = [c for c in _FIRST if rows and c not in rows[0]]
    if not rows or missing:
        raise Coco4Error(f"{path} is not a metrics.csv written by train.py (" + (
            f"no {', '.join(missing)} column" if missing else "no epoch in it") + ")")
    return rows


def ema_memory(cfg: TrainConfig, decay: float, steps_per_epoch: int) -> str:
    """What --model-ema's decay means for this run: how many of its epochs the average
    weighs (1 / (1 - decay) updates), with advice when that is most of the run."""
    epochs = 1 / ((1 - decay) * steps_per_epoch)
    line = (f"model EMA: each update keeps {decay:.4f} of the average (--model-ema-decay "
            f"{cfg.model_ema_decay} for batch {cfg.batch_size} over {cfg.epochs} epochs): it "
            f"weighs about the last {epochs:.1f} epochs")
    if epochs > cfg.epochs / 2:
        line += (f", over half the run (few images: {steps_per_epoch} updates an epoch); a "
                 "lower --model-ema-decay shortens it")
    return line
