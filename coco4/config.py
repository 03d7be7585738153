"""The training configuration: one frozen dataclass, validated on construction, stored in
every checkpoint so evaluation and resume rebuild the run from the file alone."""
import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path

from .cli import DEVICE_HELP, default_workers, workers_problem
from .data.loaders import DataOptions
from .data.prepare import TrainDataSpec
from .errors import Coco4Error
from .metrics import SELECTABLE
from .model import ARCHITECTURES, DEFAULT_ARCH
from .options import option

# above this the cache (one uint8 square per image, 8/7 of the crop's side) outgrows most disks
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024  # --image-size, and a checkpoint's, within these
# --balance: none (the original), sampler (class-balanced epochs), loss (class-weighted loss)
BALANCE_MODES = ("none", "sampler", "loss")
DATA_PATHS = ("fast", "pil")
# Settings that say where and how fast a run executes, not what it computes: on --resume these
# come from the command line, everything else from the checkpoint being resumed.
RUNTIME_FIELDS = ("coco_root", "data_dir", "train_list", "train_images", "cache_dir", "epochs",
                  "device", "workers", "output_dir", "resume", "compile", "strict", "overwrite")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run, each one train.py flag (``--batch-size`` for ``batch_size``):
    adding a training option is a field here and its use."""

    coco_root: str = option("coco", "COCO folder (images/train2017)")
    data_dir: str = option("data", "lists from annotation_prepare.py")
    train_list: str | None = option(None, "the training list (default: "
                                    "DATA_DIR/annotation_train.txt)")
    train_images: str | None = option(None, "its image folder (default: "
                                      "COCO_ROOT/images/train2017)")
    cache_dir: str | None = option(None, "decoded-image cache (default: DATA_DIR/cache)")
    epochs: int = option(70, "total epochs (also on --resume)")
    batch_size: int = option(2048, "global batch size")
    accum_steps: int = option(1, "micro-batches per optimizer step (same effective batch, "
                              "less GPU memory; BatchNorm sees each micro-batch alone)")
    lr: float = option(1e-4, "Adam learning rate")
    image_size: int = option(224, "training crop size")
    weights: str = option("imagenet", "imagenet, none, or a local .pth file")
    device: str = option("auto", DEVICE_HELP)
    workers: int = option(help="image-decoding processes", factory=default_workers)
    seed: int = option(0, "seeds the split, order, augmentation, dropout and the head's weights")
    val_fraction: float = option(0.1, "share of each class held out from the train list for "
                                 "validation")
    output_dir: str = option("checkpoint", "checkpoints and logs")
    resume: str | None = option(None, "a last.pt to continue from")
    amp: bool = option(True, "mixed precision on CUDA (bf16, or fp16 with loss scaling)")
    data_path: str = option("fast", "fast: decode once, augment on the device; pil: the "
                            "original pipeline", choices=DATA_PATHS)
    compile: bool = option(False, "torch.compile the model")
    strict: bool = option(False, "stop on a missing or unreadable image instead of leaving "
                          "it out")
    plateau_factor: float = option(0.1, "ReduceLROnPlateau: the LR is multiplied by this when "
                                   "the validation loss stops improving")
    plateau_patience: int = option(5, "ReduceLROnPlateau: epochs without improvement before it")
    arch: str = option(DEFAULT_ARCH, "backbone; stored in the checkpoint, so no later step "
                       "needs it", choices=lambda: tuple(ARCHITECTURES))
    select_by: str = option("accuracy", "the held-out validation metric that chooses best.pt",
                            choices=SELECTABLE)
    # older checkpoints lack it: they trained unbalanced
    balance: str = option("none", "class balance: sampler draws each epoch class-balanced "
                          "(with replacement); loss weights cross-entropy by inverse class "
                          "frequency", choices=BALANCE_MODES)
    overwrite: bool = option(False, "delete an earlier run's files in --output-dir and start "
                             "anew")

    def __post_init__(self):
        for field in dataclasses.fields(self):  # a stored config may hold anything
            problem = _type_problem(field.name, getattr(self, field.name),
                                    _HINTS.get(field.name))
            if problem:
                raise Coco4Error(problem)
        checks = [
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be at least 2 (BatchNorm cannot train "
             f"on one image), got {self.batch_size}"),
            (self.accum_steps >= 1, f"--accum-steps must be at least 1, got {self.accum_steps}"),
            (2 * self.accum_steps <= self.batch_size, f"--accum-steps {self.accum_steps} splits "
             f"--batch-size {self.batch_size} into micro-batches of fewer than 2 images, and "
             "BatchNorm cannot train on one: at most half the batch size"),
            (0 < self.lr < math.inf, f"--lr must be a positive number, got {self.lr}"),
            (self.image_size >= MIN_IMAGE_SIZE, f"--image-size must be at least {MIN_IMAGE_SIZE} "
             f"(every backbone downsamples 32x), got {self.image_size}"),
            (self.image_size <= MAX_IMAGE_SIZE, f"--image-size must be at most "
             f"{MAX_IMAGE_SIZE} (COCO's photos are about 640x480, and the decoded-image cache "
             f"grows with its square: about 19 GB for COCO's train list at 1024), got "
             f"{self.image_size}"),
            (self.seed >= 0, f"--seed must be 0 or more, got {self.seed}"),
            (0 < self.plateau_factor < 1, f"--plateau-factor must be between 0 and 1 "
             f"(exclusive): the LR is multiplied by it, got {self.plateau_factor}"),
            (self.plateau_patience >= 0, f"--plateau-patience must be 0 or more, got "
             f"{self.plateau_patience}"),
            (0 < self.val_fraction < 1, f"--val-fraction must be between 0 and 1 (exclusive), "
             f"got {self.val_fraction}"),
            (workers_problem(self.workers) is None, workers_problem(self.workers)),
            (re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is not None,
             f"--device must be auto, cpu, cuda, cuda:N or mps, got {self.device!r}"),
            (self.data_path in DATA_PATHS, f"--data-path must be fast or pil, got "
             f"{self.data_path!r}"),
            (self.arch in ARCHITECTURES, f"--arch must be one of {', '.join(ARCHITECTURES)}, "
             f"got {self.arch!r}"),
            (self.select_by in SELECTABLE, f"--select-by must be one of "
             f"{', '.join(SELECTABLE)}, got {self.select_by!r}"),
            (self.balance in BALANCE_MODES, f"--balance must be one of "
             f"{', '.join(BALANCE_MODES)}, got {self.balance!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise Coco4Error(message)

    @property
    def train_list_path(self) -> Path:
        return Path(self.train_list or Path(self.data_dir) / "annotation_train.txt")

    @property
    def train_images_path(self) -> Path:
        return Path(self.train_images or Path(self.coco_root) / "images" / "train2017")

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir or Path(self.data_dir) / "cache")

    @property
    def data_spec(self) -> TrainDataSpec:
        """What data preparation needs of this configuration, and nothing else."""
        return TrainDataSpec(self.train_list_path, self.train_images_path, self.image_size,
                             DataOptions(self.data_path, self.cache_path, self.workers,
                                         self.strict),
                             self.val_fraction, self.seed, self.batch_size, self.accum_steps,
                             balanced=self.balance == "sampler")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a stored dict, ignoring keys this version does not know."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def resumed_from(self, stored: dict) -> tuple["TrainConfig", dict]:
        """The stored run's settings with this command line's runtime settings on top, and the
        settings this command line changed from their defaults that resuming ignores."""
        # settings an older coco4 did not store take their defaults (what that run used); the
        # stored runtime settings (--workers 100 on a bigger machine) are replaced unchecked
        defaults = TrainConfig().to_dict()
        stored = {**defaults, **{k: v for k, v in stored.items() if k in defaults}}
        merged = {**stored, **{k: getattr(self, k) for k in RUNTIME_FIELDS}}
        ignored = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS
                   and stored[k] != v and v != defaults[k]}
        return TrainConfig.from_dict(merged), ignored


def _type_problem(name: str, value, hint) -> str | None:
    """Why ``value`` cannot be the setting ``name`` of type ``hint`` (``X | None`` allows
    None; a float setting takes an int too), or None."""
    kinds = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    allowed = value is None and type(None) in typing.get_args(hint)
    if allowed or any(isinstance(value, k) and not (isinstance(value, bool) and k is not bool)
                      for k in kinds):
        return None
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return None
    words = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
    return f"--{name.replace('_', '-')} must be {words.get(kinds[0], kinds[0])}, got {value!r}"


_HINTS = typing.get_type_hints(TrainConfig)
