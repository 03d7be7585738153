"""predict.py's work: classify the user's own images, decoding them in parallel and streaming
one row per image (class, probability, every class's probability) to a CSV or JSON-lines file
as batches are predicted: memory for one batch, however many images."""
import csv
import fcntl
import io
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from tqdm import tqdm

from .cli import check_at_least, check_fraction
from .data.images import probe
from .data.lists import UNKNOWN
from .data.loaders import ignore_sigint
from .data.transforms import pil_eval_transform
from .errors import Coco4Error
from .fileio import (
    atomic_write_text,
    check_outputs_are_not_inputs,
    check_writable,
    printable,
    spreadsheet_safe,
)
from .image_files import find_images
from .interrupt import Interrupted, StopRequest
from .options import option
from .out_of_memory import prediction_advice
from .predictor import Predictor, PredictorOptions, predictor_for

TABLE_AT_MOST = 20  # more images than this, and no --out: a CSV beside the checkpoint


@dataclass(frozen=True)
class PredictOptions(PredictorOptions):
    paths: tuple[str, ...] = option((), "image files, folders (recursive) or globs",
                                    positional=True, nargs="*")
    list: Path | None = option(None, "a file of image paths, one a line")
    out: Path | None = option(None, f"CSV or JSON-lines file (default: a table for up to "
                                    f"{TABLE_AT_MOST} images, else CHECKPOINT_DIR/"
                                    "predictions.csv or .jsonl)")
    format: str | None = option(None, "default: jsonl when --out ends in .jsonl, else csv",
                                choices=("csv", "jsonl"))
    top_k: int = option(1, "also give the K most likely classes")
    min_prob: float = option(0.0, "below this top probability an image is labelled 'unknown'")
    overwrite: bool = option(False, "replace an existing --out")

    def check(self) -> None:
        super().check()
        check_fraction("--min-prob", self.min_prob)
        check_at_least(self, top_k=1)


class _Decoded(torch.utils.data.Dataset):
    """(index, uint8 tensor or None, why not) per path: the evaluation transform of evaluate.py's
    PIL path, which its cache path equals, so probabilities match evaluate.py's."""

    def __init__(self, paths: Sequence[Path], image_size: int):
        self.paths, self.transform = paths, pil_eval_transform(image_size)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        image, why = probe(self.paths[i])
        return i, None if image is None else self.transform(image), why


def _collate(items):
    good = [(i, x) for i, x, _ in items if x is not None]
    x = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], x, [(i, why) for i, x, why in items if x is None]


@dataclass
class Batch:
    paths: list  # the images predicted, in order
    probs: torch.Tensor  # [n, classes]
    skipped: list  # (path, why) of the batch's images that could not be used


@torch.no_grad()
def predict_stream(predictor: Predictor, paths: Sequence[Path], batch_size: int,
                   workers: int) -> Iterator[Batch]:
    """Batches of predictions, in the order of ``paths``, decoded by ``workers`` processes."""
    loader = torch.utils.data.DataLoader(_Decoded(paths, predictor.image_size), batch_size,
                                         num_workers=workers, collate_fn=_collate,
                                         worker_init_fn=ignore_sigint)
    for index, x, bad in loader:
        probs = torch.empty(0, len(predictor.classes))
        if x is not None:
            probs = predictor.predict(x.to(predictor.device))
        yield Batch([paths[i] for i in index], probs, [(paths[i], why) for i, why in bad])


@dataclass(frozen=True)
class RowFormat:
    """What each output row holds: every class's probability, the top ``top_k``, and the
    predicted class, or ``unknown`` where the top probability is below ``min_prob``."""

    classes: tuple
    top_k: int = 1
    min_prob: float = 0.0

    def rows(self, batch: Batch) -> Iterator[dict]:
        top = batch.probs.topk(self.top_k, dim=1)
        for path, probs, values, idx in zip(batch.paths, batch.probs.tolist(),
                                            top.values.tolist(), top.indices.tolist()):
            best = values[0]
            yield {"path": str(path),
                   "class": self.classes[idx[0]] if best >= self.min_prob else UNKNOWN,
                   "prob": best,
                   "top_k": [(self.classes[j], v) for j, v in zip(idx, values)],
                   "probs": dict(zip(self.classes, probs))}


class RowWriter:
    """Rows to an open text file as CSV or JSON lines, flushed after every batch."""

    def __init__(self, f: IO[str], fmt: str, rows: RowFormat):
        self.f, self.fmt, self.rows = f, fmt, rows
        self.csv = csv.writer(f) if fmt == "csv" else None
        if self.csv:
            top = [f"top{j}" for j in range(1, rows.top_k + 1)] if rows.top_k > 1 else []
            self.csv.writerow(["path", "class", "prob", *top,
                               *(f"prob_{c}" for c in rows.classes)])

    def write(self, batch: Batch) -> None:
        for row in self.rows.rows(batch):
            if self.csv:  # text cells made safe to open in a spreadsheet
                top = [spreadsheet_safe(f"{c}:{p:.6f}") for c, p in row["top_k"]] \
                    if self.rows.top_k > 1 else []
                self.csv.writerow([spreadsheet_safe(row["path"]), spreadsheet_safe(row["class"]),
                                   f"{row['prob']:.6f}", *top,
                                   *(f"{p:.6f}" for p in row["probs"].values())])
            else:
                row["top_k"] = [{"class": c, "prob": p} for c, p in row["top_k"]]
                self.f.write(json.dumps(row) + "\n")
        self.f.flush()


def table(rows: list[dict], top_k: int) -> str:
    """A few predictions as an aligned text table, for the terminal."""
    if not rows:
        return "no image could be read"
    width = max(len(r["path"]) for r in rows)
    lines = [f"{'image':<{width}}  {'class':<10} prob" + ("   top" if top_k > 1 else "")]
    for r in rows:
        top = "   " + " ".join(f"{c}:{p:.3f}" for c, p in r["top_k"]) if top_k > 1 else ""
        lines.append(f"{r['path']:<{width}}  {r['class']:<10} {r['prob']:.3f}{top}")
    return "\n".join(lines)


def output_paths(opts: PredictOptions, count: int) -> tuple[Path | None, Path | None]:
    """(rows file, skipped file), both checked now; (None, None) for a table on the terminal.
    The rows are written to a ``.partial`` file beside the first, renamed to it when every
    image is done."""
    out = opts.out
    if out is None:
        if count <= TABLE_AT_MOST:
            return None, None
        ext = ".jsonl" if opts.format == "jsonl" else ".csv"
        out = Path(opts.checkpoint).parent / f"predictions{ext}"
        n = 1
        while any(p.exists() for p in (out, skipped_path(out), partial_path(out))):
            n += 1  # never another run's results
            out = out.with_name(f"predictions-{n}{ext}")
    check_writable(out.parent)
    if out.is_dir():
        raise Coco4Error(f"--out {out} is a folder; give a file name, such as {out}/preds.csv")
    if out.exists() and not out.is_file():  # /dev/full, a FIFO: never renamed over
        raise Coco4Error(f"--out {out} is not a regular file; give a file name")
    for path in (out, skipped_path(out), partial_path(out)):
        if path.exists() and not opts.overwrite:
            what = " (an interrupted run's rows)" if path == partial_path(out) else ""
            raise Coco4Error(f"{path} exists{what}; choose another --out, or pass --overwrite")
    return out, skipped_path(out)


def skipped_path(out: Path) -> Path:
    # the whole name: preds.csv's and preds.jsonl's lists must not be one file
    return out.with_name(out.name + ".skipped.tsv")


def partial_path(out: Path) -> Path:
    """Where the rows are written until every image is done."""
    return out.with_name(out.name + ".partial")


def predict_files(opts: PredictOptions) -> dict:
    """Classify the images the options name: rows to a file, or a table for a few; returns
    where they went, how many were predicted and which were skipped."""
    opts.check()
    paths, unnamed = _named(find_images(opts.paths, opts.list))
    out, skipped_out = output_paths(opts, len(paths) + len(unnamed))
    if out:
        check_outputs_are_not_inputs(
            [("--out", out), ("--out's list of skipped images", skipped_out),
             ("--out's partial file", partial_path(out))],
            [("--checkpoint", opts.checkpoint), *([("--list", opts.list)] if opts.list else []),
             *(("an input image", p) for p in paths)])
    predictor = predictor_for(opts)
    if opts.top_k > len(predictor.classes):
        raise Coco4Error(f"--top-k {opts.top_k}: the checkpoint has only "
                         f"{len(predictor.classes)} classes")
    if opts.min_prob and UNKNOWN in predictor.classes:  # trained before the name was refused
        raise Coco4Error(f"--min-prob labels the images it rejects {UNKNOWN!r}, but "
                         f"{opts.checkpoint} has a class of that name; run without --min-prob")
    rows = RowFormat(tuple(predictor.classes), opts.top_k, opts.min_prob)
    fmt = opts.format or ("jsonl" if out and out.suffix == ".jsonl" else "csv")
    run = PredictRun(predictor, paths, opts, out)
    if out is None:
        shown, skipped = run.to_table(rows)
        print(table(shown, opts.top_k))
    else:
        skipped = run.to_file(rows, fmt)
    skipped = unnamed + skipped
    report_skipped(skipped, skipped_out)
    done = len(paths) - (len(skipped) - len(unnamed))
    if out:
        print(f"predicted {done} image{'' if done == 1 else 's'} -> {out}")
    return {"out": out and str(out), "predicted": done,
            "skipped": [printable(p) for p, _ in skipped]}


def _named(paths: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The paths whose names can be written as text, and the others, with why not (a name
    that is not valid UTF-8 cannot go in a CSV or JSON row)."""
    good, bad = [], []
    for path in paths:
        try:
            str(path).encode("utf-8")
            good.append(path)
        except UnicodeEncodeError:
            bad.append((path, "its name is not valid UTF-8; rename it"))
    return good, bad


@dataclass
class PredictRun:
    """One pass over the images: batches predicted, shown with a progress bar, stopped
    cleanly by Ctrl-C or SIGTERM, --strict or an out-of-memory error, saying what was written."""

    predictor: Predictor
    paths: list
    opts: PredictOptions
    out: Path | None

    def batches(self) -> Iterator[Batch]:
        opts, done = self.opts, 0
        so_far = (f"; the rows so far are in {partial_path(self.out)}" if self.out
                  else "; nothing was written")
        bar = tqdm(total=len(self.paths), unit="img", desc="predicting")
        try:
            with StopRequest() as stop:
                for batch in predict_stream(self.predictor, self.paths, opts.batch_size,
                                            opts.workers):
                    if batch.skipped and opts.strict:
                        path, why = batch.skipped[0]
                        raise Coco4Error(f"cannot use image {printable(path)} ({why}) and "
                                         f"--strict is set{so_far}")
                    done += len(batch.paths) + len(batch.skipped)
                    bar.update(len(batch.paths) + len(batch.skipped))
                    yield batch
                    if stop.requested and done < len(self.paths):
                        raise Interrupted(f"stopped by {signal.Signals(stop.signum).name} "
                                          f"after {done} of {len(self.paths)} images{so_far}",
                                          stop.signum)
        except torch.cuda.OutOfMemoryError:
            raise prediction_advice(opts.batch_size, self.predictor.image_size,
                                    so_far) from None
        finally:
            bar.close()

    def to_table(self, rows: RowFormat) -> tuple[list, list]:
        shown, skipped = [], []
        for batch in self.batches():
            shown += rows.rows(batch)
            skipped += batch.skipped
        return shown, skipped

    def to_file(self, rows: RowFormat, fmt: str) -> list:
        """The rows to ``out``'s partial file as they are predicted, renamed to ``out`` once
        every image is done: a file under the name asked for is always whole."""
        out, partial, skipped = self.out, partial_path(self.out), []
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = claim_partial(partial, out, self.opts.overwrite)
        try:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                writer = RowWriter(f, fmt, rows)
                for batch in self.batches():
                    writer.write(batch)
                    skipped += batch.skipped
                f.flush()
                if out.exists() and not self.opts.overwrite:  # it appeared since the check
                    raise Coco4Error(f"{out} appeared while predicting; the rows are in "
                                     f"{partial}")
                os.replace(partial, out)  # under the lock: no run beside truncates it first
        except OSError as e:
            raise Coco4Error(f"could not write {partial}: {e.strerror or e}; it holds the rows "
                             "so far: free some space or choose another --out") from None
        return skipped


def claim_partial(partial: Path, out: Path, overwrite: bool) -> int:
    """The partial file opened and locked for this run alone: created anew, or with
    --overwrite an interrupted run's taken over; never one another run is writing (two runs
    that chose one name at once), never a link's target."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (0 if overwrite else os.O_EXCL)
    try:
        fd = os.open(partial, flags, 0o666)
    except FileExistsError:
        raise Coco4Error(f"{partial} appeared since the check: another run is writing to "
                         f"{out}; wait for it or choose another --out") from None
    except OSError as e:  # ELOOP: a symlink
        raise Coco4Error(f"could not open {partial}: {e.strerror or e}; remove it or choose "
                         "another --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Coco4Error(f"another run is writing {partial}; wait for it or choose another "
                         "--out") from None
    os.ftruncate(fd, 0)
    return fd


ONE_LINE = {ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"}  # a warning stays one line


def report_skipped(skipped, skipped_out) -> None:
    if not skipped:
        if skipped_out and skipped_out.exists():  # an earlier run's (--overwrite): not this one's
            skipped_out.unlink()
        return
    if skipped_out:  # a tab or a newline in a name is quoted, as in the CSV
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
        writer.writerows([("path", "reason")] + [(spreadsheet_safe(printable(p)), why)
                                                 for p, why in skipped])
        atomic_write_text(skipped_out, buf.getvalue())
    names = ", ".join(f"{printable(p).translate(ONE_LINE)} ({why})" for p, why in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    where = f"; all listed in {skipped_out}" if skipped_out else ""
    images = "1 image" if len(skipped) == 1 else f"{len(skipped)} images"
    print(f"warning: {images} skipped: {names}{more}{where}", file=sys.stderr)
