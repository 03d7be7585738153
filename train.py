"""Fine-tune ResNet-50 (or another registered backbone) on the 4-class COCO lists.

    python train.py --batch-size 2048                       # the full recipe, one GPU
    python train.py --batch-size 2048 --accum-steps 4       # same effective batch, less GPU memory
    python train.py --balance sampler                       # class-balanced epochs (README: which)
    python train.py --arch convnext_tiny                    # another backbone (--help lists them)
    torchrun --nproc_per_node=4 train.py --batch-size 2048  # DistributedDataParallel
    python train.py --resume checkpoint/last.pt             # continue a stopped run
    python train.py --device cpu --image-size 64 --epochs 5 --weights none   # a CPU smoke run

Writes last.pt (every epoch), best.pt (best held-out validation score, --select-by),
metrics.csv and TensorBoard events into --output-dir.
"""
import argparse
import os
import shlex

from coco4 import cli
from coco4.config import BALANCE_MODES, TrainConfig
from coco4.metrics import SELECTABLE
from coco4.model import ARCHITECTURES
from coco4.trainer import fit

D = TrainConfig()


def get_args_parser():
    p = argparse.ArgumentParser(description="Fine-tune a backbone on the 4-class COCO lists.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--coco-root", default=D.coco_root, help="COCO folder (images/train2017)")
    p.add_argument("--data-dir", default=D.data_dir, help="lists from annotation_prepare.py")
    p.add_argument("--train-list", default=None, help="default: DATA_DIR/annotation_train.txt")
    p.add_argument("--train-images", default=None, help="default: COCO_ROOT/images/train2017")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache (default DATA_DIR/cache)")
    p.add_argument("--epochs", type=int, default=D.epochs, help="total epochs (also on --resume)")
    p.add_argument("--batch-size", type=int, default=D.batch_size, help="global batch size")
    p.add_argument("--accum-steps", type=int, default=D.accum_steps,
                   help="micro-batches per optimizer step (same effective batch, less GPU "
                        "memory; BatchNorm sees each micro-batch alone)")
    p.add_argument("--lr", type=float, default=D.lr, help="Adam learning rate")
    p.add_argument("--image-size", type=int, default=D.image_size, help="training crop size")
    p.add_argument("--arch", choices=tuple(ARCHITECTURES), default=D.arch,
                   help="backbone; stored in the checkpoint, so no later step needs it")
    p.add_argument("--weights", default=D.weights, help="imagenet, none, or a local .pth file")
    p.add_argument("--select-by", choices=SELECTABLE, default=D.select_by,
                   help="the held-out validation metric that chooses best.pt")
    p.add_argument("--balance", choices=BALANCE_MODES, default=D.balance,
                   help="class balance: sampler draws each epoch class-balanced (with "
                        "replacement); loss weights cross-entropy by inverse class frequency")
    p.add_argument("--device", default=D.device, help=cli.DEVICE_HELP)
    p.add_argument("--workers", type=int, default=D.workers, help="image-decoding processes")
    p.add_argument("--seed", type=int, default=D.seed,
                   help="seeds the split, order, augmentation, dropout and the head's weights")
    p.add_argument("--val-fraction", type=float, default=D.val_fraction,
                   help="share of each class held out from the train list for validation")
    p.add_argument("--output-dir", default=D.output_dir, help="checkpoints and logs")
    p.add_argument("--resume", default=None, help="a last.pt to continue from")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier run's files in --output-dir and start anew")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=D.amp,
                   help="mixed precision on CUDA (bf16, or fp16 with loss scaling)")
    p.add_argument("--data-path", choices=("fast", "pil"), default=D.data_path,
                   help="fast: decode once, augment on the device; pil: the original pipeline")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=D.compile,
                   help="torch.compile the model")
    p.add_argument("--strict", action=argparse.BooleanOptionalAction, default=D.strict,
                   help="stop on a missing or unreadable image instead of leaving it out")
    return p


def main(args):
    # the resume command an interrupted run prints names this script as the user reaches it
    return fit(TrainConfig(**vars(args)), program=shlex.join(["python", os.path.relpath(__file__)]))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
