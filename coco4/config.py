"""A training run's settings, in two frozen dataclasses: the ``Recipe`` (what defines the model:
stored in every checkpoint, and resumed as stored) and the ``RunOptions`` (where the data is,
where the files go, how fast it runs: from the command line each time). ``TrainConfig`` is the
two together, each field one train.py flag. Bounds sit next to each field and are checked on
construction (``options.check``), so a value read back from a checkpoint is held to the rules
of one typed on the command line.

Adding a training option is a ``Recipe`` field here and its use (usually in coco4.training).
"""
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

from . import options
from .cli import DEVICE_HELP, default_workers, workers_problem
from .data.loaders import DataOptions
from .data.prepare import TrainDataSpec
from .errors import Coco4Error
from .image_augment import AUTO_AUGMENT_POLICIES
from .metrics import SELECTABLE
from .model import ARCHITECTURES, DEFAULT_ARCH
from .options import option

# above this the cache (one uint8 square per image, 8/7 of the crop's side) outgrows most disks
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 1024  # --image-size, and a checkpoint's, within these
# --balance: none (the original), sampler (class-balanced epochs), loss (class-weighted loss)
BALANCE_MODES = ("none", "sampler", "loss")
DATA_PATHS = ("fast", "pil")
LR_SCHEDULERS = ("plateau", "cosine")


@dataclass(frozen=True)
class Recipe:
    """What a run computes: stored in each checkpoint, and on --resume taken from it (only
    when it stops, ``epochs`` and ``patience``, from the command line:
    RESUMED_FROM_COMMAND_LINE)."""

    arch: str = option(DEFAULT_ARCH, "backbone; stored in the checkpoint, so no later step "
                       "needs it", choices=lambda: tuple(ARCHITECTURES))
    weights: str = option("imagenet", "imagenet, none, or a local .pth file")
    image_size: int = option(224, "training crop size", low=MIN_IMAGE_SIZE, high=MAX_IMAGE_SIZE,
                             why="(every backbone downsamples 32x; COCO's photos are about "
                             "640x480, and the decoded-image cache grows with the square: about "
                             "19 GB for COCO's train list at 1024)")
    epochs: int = option(70, "total epochs (also on --resume)", low=1)
    batch_size: int = option(2048, "global batch size", low=2,
                             why="(BatchNorm cannot train on one image)")
    accum_steps: int = option(1, "micro-batches per optimizer step (same effective batch, "
                              "less GPU memory; BatchNorm sees each micro-batch alone)", low=1)
    lr: float = option(1e-4, "Adam learning rate", above=0, high=10,
                       why="(Adam's step grows with it: the recipe's is 1e-4)")
    label_smoothing: float = option(0.0, "cross-entropy's label smoothing: each target keeps "
                                    "1 - S and spreads S evenly over all classes", low=0,
                                    below=1)
    lr_scheduler: str = option("plateau", "plateau: ReduceLROnPlateau on the validation loss, "
                               "once an epoch (the original); cosine: cosine annealing to "
                               "--lr-min over the run's optimizer steps",
                               choices=LR_SCHEDULERS)
    lr_warmup_epochs: int = option(0, "epochs of linear warmup, per optimizer step, from "
                                   "1/100 of --lr", low=0)
    lr_min: float = option(0.0, "the LR's floor: where cosine ends, the least plateau lowers "
                           "it to", low=0)
    mixup_alpha: float = option(0.0, "mixup: each image blended with another, the share "
                                "drawn from Beta(A, A), the targets blended alike (0: off)",
                                low=0)
    cutmix_alpha: float = option(0.0, "cutmix: a box of another image pasted in, its share "
                                 "from Beta(A, A); with --mixup-alpha, one of the two per "
                                 "batch (0: off)", low=0)
    auto_augment: str = option("none", "per-image augmentation after the crop and flip: "
                               "ta_wide (TrivialAugment Wide: one operation an image, a random "
                               "strength), ra (RandAugment: two, at magnitude 9 of 31)",
                               choices=AUTO_AUGMENT_POLICIES)
    random_erase: float = option(0.0, "each training image's chance of a random box "
                                 "(2-33%% of it) filled with the mean colour (RandomErasing)",
                                 low=0, high=1)
    model_ema: bool = option(False, "keep an exponential moving average of the weights: "
                             "validation, the temperature, best.pt, evaluate, predict and "
                             "export use the averaged model (the checkpoint's 'ema' says so)")
    model_ema_decay: float = option(0.998, "--model-ema's decay, adjusted as torchvision's "
                                    "references do: each update keeps 1 - (1 - D) * "
                                    "batch size / epochs of the average", above=0, below=1)
    plateau_factor: float = option(0.1, "ReduceLROnPlateau: the LR is multiplied by this when "
                                   "the validation loss stops improving", above=0, below=1)
    plateau_patience: int = option(5, "ReduceLROnPlateau: epochs without improvement before "
                                   "it", low=0)
    # older checkpoints lack it: they trained unbalanced
    balance: str = option("none", "class balance: sampler draws each epoch class-balanced "
                          "(with replacement); loss weights cross-entropy by inverse class "
                          "frequency", choices=BALANCE_MODES)
    select_by: str = option("accuracy", "the held-out validation metric that chooses best.pt",
                            choices=SELECTABLE)
    patience: int = option(0, "stop after this many epochs without a better held-out "
                           "--select-by score (0: never stop early)", low=0)
    seed: int = option(0, "seeds the split, order, augmentation, dropout and the head's "
                       "weights", low=0)
    val_fraction: float = option(0.1, "share of each class held out from the train list for "
                                 "validation", above=0, below=1)
    data_path: str = option("fast", "fast: decode once, augment on the device; pil: the "
                            "original pipeline", choices=DATA_PATHS)

    def __post_init__(self):
        options.check(self)
        if self.lr_warmup_epochs >= self.epochs:
            raise Coco4Error(f"--lr-warmup-epochs {self.lr_warmup_epochs} leaves none of the "
                             f"{self.epochs} epochs to train at the full LR: fewer than --epochs")
        if self.lr_min >= self.lr:
            raise Coco4Error(f"--lr-min {self.lr_min} must be below --lr {self.lr}: the floor "
                             "the schedule lowers the LR towards")
        if 2 * self.accum_steps > self.batch_size:
            raise Coco4Error(f"--accum-steps {self.accum_steps} splits --batch-size "
                             f"{self.batch_size} into micro-batches of fewer than 2 images, and "
                             "BatchNorm cannot train on one: at most half the batch size")


@dataclass(frozen=True)
class RunOptions:
    """Where a run reads and writes and how it executes, not what it computes: never stored
    as the recipe, always from this command line (a run resumed on another machine)."""

    coco_root: str = option("coco", "COCO folder (images/train2017)")
    data_dir: str = option("data", "lists from annotation_prepare.py")
    train_list: str | None = option(None, "the training list (default: "
                                    "DATA_DIR/annotation_train.txt)")
    train_images: str | None = option(None, "its image folder (default: "
                                      "COCO_ROOT/images/train2017)")
    cache_dir: str | None = option(None, "decoded-image cache (default: DATA_DIR/cache)")
    device: str = option("auto", DEVICE_HELP)
    workers: int = option(help="image-decoding processes", factory=default_workers)
    output_dir: str | None = option(None, "checkpoints and logs (default: checkpoint; with "
                                    "--resume, the folder of the last.pt it continues)")
    resume: str | None = option(None, "a last.pt to continue from")
    save_every: float = option(300.0, "seconds between last.pt writes, checked at each epoch's "
                               "end (0: every epoch); the run's end and a stop always write "
                               "it, and best.pt goes with it", low=0)
    amp: bool = option(True, "mixed precision on CUDA (bf16, or fp16 with loss scaling)")
    compile: bool = option(False, "torch.compile the model")
    strict: bool = option(False, "stop on a missing or unreadable image instead of leaving "
                          "it out")
    overwrite: bool = option(False, "delete an earlier run's files in --output-dir and start "
                             "anew")

    def __post_init__(self):
        options.check(self)
        if self.output_dir is None:  # a resumed run goes on in its own folder
            object.__setattr__(self, "output_dir",
                               str(Path(self.resume).parent) if self.resume else "checkpoint")
        if workers_problem(self.workers):
            raise Coco4Error(workers_problem(self.workers))
        if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device) is None:
            raise Coco4Error(f"--device must be auto, cpu, cuda, cuda:N or mps, got "
                             f"{self.device!r}")


# --recipe: named sets of recipe settings a command line starts from (docs/training.md gives
# each value's source); any flag given explicitly wins, and a checkpoint stores the settings
RECIPES = options.Presets("recipe", {
    "original": {},  # the original project's: every field's default
    "modern": {  # torchvision's references' recipe for ResNet-50 (pytorch/vision#3995), for
        # fine-tuning: their regularisers, a cosine after a short warmup, an average of the
        # weights; Adam at the original's LR stays
        "label_smoothing": 0.1, "mixup_alpha": 0.2, "cutmix_alpha": 1.0,
        "auto_augment": "ta_wide", "random_erase": 0.1, "lr_scheduler": "cosine",
        "lr_warmup_epochs": 2, "model_ema": True},
}, "a named set of recipe settings to start from; flags given win (docs/training.md lists "
   "them): original (every default) or modern (label smoothing, mixup, cutmix, TrivialAugment, "
   "random erasing, warmup + cosine, model EMA)")

RECIPE_FIELDS = tuple(f.name for f in dataclasses.fields(Recipe))
RUN_FIELDS = tuple(f.name for f in dataclasses.fields(RunOptions))
# what --resume takes from the command line: the run options, and when to stop (the total
# number of epochs, the patience), which change no epoch's work
RESUMED_FROM_COMMAND_LINE = (*RUN_FIELDS, "epochs", "patience")


@dataclass(frozen=True)
class TrainConfig(RunOptions, Recipe):
    """Every setting of a run: the recipe's fields and the run options', each one train.py flag
    (``--batch-size`` for ``batch_size``)."""

    def __post_init__(self):
        Recipe.__post_init__(self)
        RunOptions.__post_init__(self)

    @property
    def recipe(self) -> Recipe:
        return Recipe(**{name: getattr(self, name) for name in RECIPE_FIELDS})

    @property
    def run_options(self) -> RunOptions:
        return RunOptions(**{name: getattr(self, name) for name in RUN_FIELDS})

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
        """The stored recipe with this command line's run options (and total epochs) on top,
        and the recipe settings this command line changed from their defaults that resuming
        ignores."""
        # settings an older coco4 did not store take their defaults (what that run used); the
        # stored run options (an older coco4 stored them too: --workers 100 on a bigger
        # machine) are replaced unchecked
        defaults = TrainConfig().to_dict()
        stored = {**defaults, **{k: v for k, v in stored.items() if k in RECIPE_FIELDS}}
        merged = {**stored, **{k: getattr(self, k) for k in RESUMED_FROM_COMMAND_LINE}}
        ignored = {k: v for k, v in self.to_dict().items() if k not in RESUMED_FROM_COMMAND_LINE
                   and stored[k] != v and v != defaults[k]}
        return TrainConfig.from_dict(merged), ignored
