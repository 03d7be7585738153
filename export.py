"""Export a checkpoint for use without PyTorch (ONNX) or from C++ (TorchScript), then check the
exported file against PyTorch on real inputs.

    python export.py                                  # checkpoint/best.pt -> checkpoint/best.onnx
    python export.py --format torchscript             # -> checkpoint/best.torchscript.pt
    python export.py --list data/annotation_val.txt --images coco/images/val2017   # parity
    python export.py --verify checkpoint/best.onnx    # check an existing file only

The graph is the whole classifier: uint8 RGB images, NCHW, at the size stored in the file,
in; class probabilities out; normalisation inside; any batch size. The class names, input size
and layout and the resize a caller must do are in the file (ONNX metadata_props). Exit 1 when
the exported file's probabilities differ from PyTorch's by more than --atol, or any top-1 class
differs.
"""
import argparse
from pathlib import Path

import torch

from coco4 import cli
from coco4.cli import Coco4Error, GateFailed
from coco4.data.images import probe
from coco4.data.lists import read_list
from coco4.data.transforms import pil_eval_transform
from coco4.evaluation import load_predictor
from coco4.exporting import FORMATS, example_input, export, file_format, parity, read_metadata
from coco4.fileio import check_writable
from coco4.predicting import find_images


def get_args_parser():
    p = argparse.ArgumentParser(description="Export a checkpoint to ONNX or TorchScript.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoint/best.pt"),
                   help="a train.py checkpoint, or the original project's")
    p.add_argument("--format", choices=tuple(FORMATS), default="onnx")
    p.add_argument("--out", type=Path, default=None,
                   help="default: beside the checkpoint, as NAME.onnx or NAME.torchscript.pt")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--verify", type=Path, default=None,
                   help="export nothing: check this exported file against the checkpoint")
    p.add_argument("--list", type=Path, default=None,
                   help="parity images: an image list (with --images, its folder)")
    p.add_argument("--images", type=Path, default=None,
                   help="parity images: a folder (or the folder of --list's images); "
                        "default: generated ones")
    p.add_argument("--num-images", type=int, default=16, help="parity images used")
    cli.add_calibration_arg(p)
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest probability difference the parity check accepts")
    return p


def parity_images(args, image_size: int) -> torch.Tensor:
    """Up to --num-images decodable images from --list/--images, as the model's input."""
    if args.list and not args.images:
        raise Coco4Error("--list needs --images, the folder its file names are in")
    if args.list:
        paths = [args.images / f for f in read_list(args.list).files]
    else:
        paths = find_images([str(args.images)])
    transform, images = pil_eval_transform(image_size), []
    for path in paths:
        image, _ = probe(path)
        if image is not None:
            images.append(transform(image))
        if len(images) == args.num_images:
            break
    if not images:
        raise Coco4Error(f"no readable images in {args.list or args.images} for the parity check")
    return torch.stack(images)


def output_path(args) -> Path:
    if args.verify:
        if not args.verify.is_file():
            raise Coco4Error(f"--verify {args.verify}: no such file")
        return args.verify
    out = args.out or args.checkpoint.with_name(args.checkpoint.stem + FORMATS[args.format])
    check_writable(out.parent)
    if out.exists() and not args.overwrite:
        raise Coco4Error(f"{out} exists; choose another --out, or pass --overwrite")
    return out


def main(args):
    if args.num_images < 1 or not args.atol >= 0:
        raise Coco4Error(f"--num-images must be at least 1 and --atol 0 or more, got "
                         f"{args.num_images} and {args.atol}")
    out = output_path(args)
    # a file to verify says its format by its content; an export writes the one asked for
    fmt = file_format(out) if args.verify else args.format
    predictor = load_predictor(args.checkpoint, "cpu", amp=False, calibrated=args.calibration)
    images = (parity_images(args, predictor.image_size) if args.list or args.images
              else example_input(predictor, args.num_images))
    if not args.verify:
        print(f"exporting {args.checkpoint} to {fmt} (about 20 s for ResNet-50 on 2 cores) ...")
        export(predictor, fmt, out)
        print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    meta = read_metadata(out, fmt)
    print(f"input {meta['input']}\npreprocessing: {meta['preprocessing']}\n"
          f"output {meta['output']}; classes {meta['classes']}")
    result = parity(predictor, out, fmt, images)
    print(result)
    if not result.passed(args.atol):
        raise GateFailed(f"{out} fails the parity check against {args.checkpoint} "
                         f"(--atol {args.atol:g}): {result}")
    return {"out": str(out), "format": fmt, "parity": result}


if __name__ == "__main__":
    cli.run(main, get_args_parser())
