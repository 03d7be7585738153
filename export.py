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
from coco4 import cli, options

with cli.quiet_startup(__name__):  # Ctrl-C while torch imports: one line
    from coco4.exporting import ExportOptions, export_checkpoint


def get_args_parser():
    return options.parser("Export a checkpoint to ONNX or TorchScript.", ExportOptions)


def main(args):
    return export_checkpoint(options.from_args(ExportOptions, args))


if __name__ == "__main__":
    cli.run(main, get_args_parser())
