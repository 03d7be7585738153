"""Classify your own images with a trained checkpoint: files, folders (recursively), globs.

    python predict.py photos/                        # a table for a few images, else a CSV
    python predict.py photos/ --out preds.csv --top-k 2 --min-prob 0.6
    python predict.py --list paths.txt --out preds.jsonl      # one path per line; JSON lines

One row per image: the path, the predicted class (``unknown`` below --min-prob), its
probability, and every class's probability. Rows stream to the file as batches are predicted.
Images that cannot be read are left out, named in a warning and in OUT.skipped.tsv.
"""
import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from coco4 import cli
from coco4.cli import Coco4Error
from coco4.evaluation import out_of_memory, predictor_from_args
from coco4.fileio import atomic_write_text, check_writable
from coco4.predicting import RowFormat, RowWriter, find_images, predict_stream, table

TABLE_AT_MOST = 20  # more images than this, and no --out: a CSV beside the checkpoint


def get_args_parser():
    p = argparse.ArgumentParser(description="Classify your own images with a checkpoint.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("paths", nargs="*", help="image files, folders (recursive) or globs")
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoint/best.pt"),
                   help="a train.py checkpoint, or the original project's")
    p.add_argument("--list", type=Path, default=None, help="a file of image paths, one a line")
    p.add_argument("--out", type=Path, default=None, help=f"CSV or JSON-lines file (default: "
                   f"a table for up to {TABLE_AT_MOST} images, else CHECKPOINT_DIR/"
                   "predictions.csv or .jsonl)")
    p.add_argument("--format", choices=("csv", "jsonl"), default=None,
                   help="default: jsonl when --out ends in .jsonl, else csv")
    p.add_argument("--top-k", type=int, default=1, help="also give the K most likely classes")
    p.add_argument("--min-prob", type=float, default=0.0,
                   help="below this top probability an image is labelled 'unknown'")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch")
    p.add_argument("--device", default="auto", help=cli.DEVICE_HELP)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                   help="mixed precision on CUDA")
    p.add_argument("--workers", type=int, default=cli.default_workers(),
                   help="image-decoding processes")
    cli.add_calibration_arg(p)
    cli.add_tta_arg(p)
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def check_args(args) -> None:
    cli.check_fraction("--min-prob", args.min_prob)
    cli.check_at_least(args, top_k=1, batch_size=1)
    if cli.workers_problem(args.workers):
        raise Coco4Error(cli.workers_problem(args.workers))


def output_paths(args, count: int) -> tuple[Path | None, Path | None]:
    """(rows file, skipped file), both checked now; (None, None) for a table on the terminal."""
    out = args.out
    if out is None:
        if count <= TABLE_AT_MOST:
            return None, None
        ext = ".jsonl" if args.format == "jsonl" else ".csv"
        out = Path(args.checkpoint).parent / f"predictions{ext}"
        n = 1
        while out.exists() or skipped_path(out).exists():  # never another run's results
            n += 1
            out = out.with_name(f"predictions-{n}{ext}")
    check_writable(out.parent)
    if out.is_dir():
        raise Coco4Error(f"--out {out} is a folder; give a file name, such as {out}/preds.csv")
    for path in (out, skipped_path(out)):
        if path.exists() and not args.overwrite:
            raise Coco4Error(f"{path} exists; choose another --out, or pass --overwrite")
    return out, skipped_path(out)


def skipped_path(out: Path) -> Path:
    # the whole name: preds.csv's and preds.jsonl's lists must not be one file
    return out.with_name(out.name + ".skipped.tsv")


def main(args):
    check_args(args)
    paths = find_images(args.paths, args.list)
    out, skipped_out = output_paths(args, len(paths))
    predictor = predictor_from_args(args)
    if args.top_k > len(predictor.classes):
        raise Coco4Error(f"--top-k {args.top_k}: the checkpoint has only "
                         f"{len(predictor.classes)} classes")
    rows = RowFormat(tuple(predictor.classes), args.top_k, args.min_prob)
    fmt = args.format or ("jsonl" if out and out.suffix == ".jsonl" else "csv")
    if out is None:
        shown, skipped = run_to_table(predictor, paths, rows, args)
        print(table(shown, args.top_k))
    else:
        skipped = run_to_file(predictor, paths, rows, args, out, fmt)
    report_skipped(skipped, skipped_out)
    done = len(paths) - len(skipped)
    if out:
        print(f"predicted {done} images -> {out}")
    return {"out": out and str(out), "predicted": done, "skipped": [str(p) for p, _ in skipped]}


def _batches(predictor, paths, args, out):
    """The stream of predicted batches with a progress bar; a GPU out-of-memory error and a
    --strict stop say what was written."""
    so_far = f"; the rows so far are in {out}" if out else ""
    bar = tqdm(total=len(paths), unit="img", desc="predicting")
    try:
        for batch in predict_stream(predictor, paths, args.batch_size, args.workers):
            if batch.skipped and args.strict:
                path, why = batch.skipped[0]
                raise Coco4Error(f"cannot use image {path} ({why}) and --strict is set{so_far}")
            bar.update(len(batch.paths) + len(batch.skipped))
            yield batch
    except torch.cuda.OutOfMemoryError:
        raise out_of_memory(args.batch_size, predictor.image_size, so_far) from None
    finally:
        bar.close()


def run_to_table(predictor, paths, rows, args):
    shown, skipped = [], []
    for batch in _batches(predictor, paths, args, None):
        shown += rows.rows(batch)
        skipped += batch.skipped
    return shown, skipped


def run_to_file(predictor, paths, rows, args, out, fmt):
    skipped = []
    out.parent.mkdir(parents=True, exist_ok=True)
    # written as predicted ("x": never over a file that appeared since the check)
    with open(out, "w" if args.overwrite else "x", newline="", encoding="utf-8") as f:
        writer = RowWriter(f, fmt, rows)
        for batch in _batches(predictor, paths, args, out):
            writer.write(batch)
            skipped += batch.skipped
    return skipped


def report_skipped(skipped, skipped_out) -> None:
    if not skipped:
        if skipped_out and skipped_out.exists():  # an earlier run's (--overwrite): not this one's
            skipped_out.unlink()
        return
    if skipped_out:
        atomic_write_text(skipped_out, "path\treason\n" + "".join(
            f"{p}\t{why}\n" for p, why in skipped))
    names = ", ".join(f"{p} ({why})" for p, why in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    where = f"; all listed in {skipped_out}" if skipped_out else ""
    images = "1 image" if len(skipped) == 1 else f"{len(skipped)} images"
    print(f"warning: {images} skipped: {names}{more}{where}", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, get_args_parser())
