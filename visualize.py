"""Pictures of the data and of a checkpoint's predictions, written as PNG files.

    python visualize.py                                   # checkpoint/best.pt on the val list
    python visualize.py --image my_bird.jpg other.png     # predict your own images
    python visualize.py --num 12 --show                   # also open the figures in windows

Writes samples.png, predictions.png, errors.png, gradcam.png (where the evidence for the
predicted class lies, over the most wrong images and a few right ones) and, when the run's
metrics.csv is beside the checkpoint, training_curves.png to --out-dir (default: vis/ beside
the checkpoint).
"""
from coco4 import cli, options

with cli.quiet_startup(__name__):  # Ctrl-C while torch imports: one line
    from coco4.pictures import PictureOptions, draw_pictures


def get_args_parser():
    return options.parser("Write PNG pictures of data and predictions.", PictureOptions)


def main(args):
    return draw_pictures(options.from_args(PictureOptions, args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
