"""Fine-tune ResNet-50 (or another registered backbone) on the 4-class COCO lists.

    python train.py --batch-size 2048                       # the full recipe, one GPU
    python train.py --batch-size 2048 --accum-steps 4       # same effective batch, less GPU memory
    python train.py --balance sampler                       # class-balanced epochs (docs: which)
    python train.py --recipe modern                         # mixup, cutmix, EMA, ... (docs)
    python train.py --arch convnext_tiny                    # another backbone (--help lists them)
    torchrun --nproc_per_node=4 train.py --batch-size 2048  # DistributedDataParallel
    python train.py --resume checkpoint/last.pt             # continue a stopped run
    python train.py --device cpu --image-size 64 --epochs 5 --weights none   # a CPU smoke run

Writes last.pt (every epoch), best.pt (best held-out validation score, --select-by),
metrics.csv and TensorBoard events into --output-dir. Every flag is a field of
coco4.config.TrainConfig, stored in each checkpoint.
"""
import os
import shlex

from coco4 import cli, options

with cli.quiet_startup(__name__):  # Ctrl-C while torch imports: one line
    from coco4.config import RECIPES, TrainConfig
    from coco4.trainer import fit


def get_args_parser():
    return options.parser("Fine-tune a backbone on the 4-class COCO lists.", TrainConfig,
                          presets=RECIPES)


def main(args):
    # the resume command an interrupted run prints names this script as the user reaches it
    return fit(options.from_args(TrainConfig, args),
               program=shlex.join(["python", os.path.relpath(__file__)]))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
