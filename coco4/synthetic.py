"""python -m coco4.synthetic --root DIR --num-train 240 --num-val 80 --seed 0 [--coco-size]
    [--class-ratios 1,1,1,0.33] [--hard]

Write a small synthetic dataset in COCO 2017's own format and layout (ROOT/annotations/
instances_{train,val}2017.json, ROOT/images/{train,val}2017/<12-digit id>.jpg) so the pipeline
runs without COCO. Each target class has its own shape and colour, easy for a small network; the
images also hold what a real COCO filter must handle: crowds, distractor classes, two targets,
distractors only, no annotations at all, grayscale JPEGs.
"""
import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from .data.coco_categories import CATEGORY_ID, COCO_CATEGORIES
from .data.lists import write_classes, write_list
from .errors import Coco4Error
from .fileio import atomic_write_text, check_writable

TARGETS = ("bird", "airplane", "train", "boat")
DISTRACTORS = ("person", "car", "dog", "cat", "bench")
# what the extra negatives (``negatives=``) show: the distractors and four kinds of other
# supercategories (food, indoor, furniture, electronic), never in the cases above, so that a
# request for negatives leaves every other image as it was
NEGATIVE_KINDS = (*DISTRACTORS, "pizza", "clock", "chair", "tv")
DEFAULT_SIZES = ((96, 72), (72, 96), (80, 80), (112, 84))
COCO_SIZES = ((640, 480), (480, 640))
JPEG_QUALITY = 90
MIN_SIDE = 32
LICENSE = {"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0 1.0"}
ID_SPAN = 1_000_000  # train ids lie in [1, ID_SPAN), val ids in [ID_SPAN + 1, 2 * ID_SPAN)

# name -> (outline, base RGB, height/width range)
STYLES = {
    "bird": ("triangle", (230, 85, 30), (0.75, 1.0)),
    "airplane": ("cross", (40, 90, 225), (0.9, 1.1)),
    "train": ("rect", (40, 165, 60), (0.28, 0.4)),
    "boat": ("half_disc", (235, 205, 40), (0.45, 0.55)),
    "person": ("ellipse", (200, 50, 200), (2.0, 2.6)),
    "car": ("rounded", (40, 200, 215), (0.45, 0.6)),
    "dog": ("ellipse", (125, 75, 35), (0.95, 1.05)),
    "cat": ("diamond", (225, 225, 230), (0.9, 1.2)),
    "bench": ("rect", (75, 40, 140), (0.12, 0.2)),
    "pizza": ("hexagon", (215, 160, 95), (0.9, 1.1)),
    "clock": ("octagon", (150, 150, 150), (0.95, 1.05)),
    "chair": ("trapezoid", (110, 140, 80), (1.1, 1.4)),
    "tv": ("rect", (30, 30, 40), (0.55, 0.7)),
}

# Approximate share per case; each gets at least one image and "single" takes the rest. The
# project's filter keeps single, grayscale (a mode "L" JPEG) and crowd_same_class images.
CASE_FRACTIONS = {"crowd_same_class": 0.04, "crowd_other_class": 0.02, "with_distractors": 0.08,
                  "two_targets": 0.06, "distractors_only": 0.06, "no_annotations": 0.04,
                  "grayscale": 0.05}
CASES = ("single", *CASE_FRACTIONS)
KEPT_CASES = ("single", "grayscale", "crowd_same_class")  # one target class, nothing else


def _outline(kind):
    """Vertices in the unit square, touching all four sides so the shape fills its box."""
    t = 1 / 3
    if kind == "triangle":
        return [(0, 1), (1, 1), (0.5, 0)]
    if kind == "cross":
        return [(t, 0), (1 - t, 0), (1 - t, t), (1, t), (1, 1 - t), (1 - t, 1 - t), (1 - t, 1),
                (t, 1), (t, 1 - t), (0, 1 - t), (0, t), (t, t)]
    if kind == "ellipse":
        return [(0.5 + 0.5 * math.cos(a), 0.5 + 0.5 * math.sin(a))
                for a in np.linspace(0, 2 * math.pi, 32, endpoint=False)]
    if kind == "half_disc":  # chord on top, arc below
        return [(0.5 + 0.5 * math.cos(a), math.sin(a)) for a in np.linspace(0, math.pi, 17)]
    if kind in ("hexagon", "octagon"):  # corners on the box's sides
        n = 6 if kind == "hexagon" else 8
        corners = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, n,
                                                                  endpoint=False)]
        lo = [min(c[i] for c in corners) for i in (0, 1)]
        hi = [max(c[i] for c in corners) for i in (0, 1)]
        return [tuple((c[i] - lo[i]) / (hi[i] - lo[i]) for i in (0, 1)) for c in corners]
    if kind == "trapezoid":
        return [(0.2, 0), (0.8, 0), (1, 1), (0, 1)]
    return {"rect": [(0, 0), (1, 0), (1, 1), (0, 1)],
            "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
            "rounded": [(0.15, 0), (0.85, 0), (0.96, 0.04), (1, 0.15), (1, 0.85), (0.96, 0.96),
                        (0.85, 1), (0.15, 1), (0.04, 0.96), (0, 0.85), (0, 0.15), (0.04, 0.04)],
            }[kind]


@dataclass(frozen=True)
class Look:
    """How hard the images are to classify. The default: one target's objects at 30-70% of the
    short side, each class in its own colour family, on a plain background. ``HARD``: smaller
    objects, colours that stray towards other classes', unlabelled clutter behind them and bars
    across them (none of it a COCO category, so the lists keep the same images)."""

    scale: tuple[float, float] = (0.3, 0.7)  # an object's long side, a share of the short side
    brightness: tuple[float, float] = (0.85, 1.1)
    tint: int = 15  # each channel moved by up to this
    clutter: int = 0  # unlabelled shapes behind the objects, up to this many
    occluders: int = 0  # bars across each target object, up to this many


HARD = Look(scale=(0.2, 0.45), brightness=(0.7, 1.2), tint=45, clutter=5, occluders=2)


def _jitter(rng, base, look=Look()):
    # Small brightness/hue changes keep each class in its own colour family (by default).
    rgb = np.array(base) * rng.uniform(*look.brightness) + rng.integers(-look.tint,
                                                                        look.tint + 1, size=3)
    return tuple(int(v) for v in np.clip(rgb, 0, 255))


def _background(rng, w, h):
    """A muted (near-grey) tint with a gentle gradient and mild noise, different per image."""
    base = (rng.uniform(70, 170) + rng.uniform(-25, 25, size=3)).astype(np.float32)
    angle, tilt = rng.uniform(0, 2 * math.pi), rng.uniform(-30, 30, size=3).astype(np.float32)
    ramp = (math.cos(angle) * np.arange(w, dtype=np.float32)[None, :] / w
            + math.sin(angle) * np.arange(h, dtype=np.float32)[:, None] / h)
    # Uniform float32 noise: five times cheaper than normal float64 at COCO size, looks the same.
    img = rng.random((h, w, 3), dtype=np.float32)
    img -= 0.5
    img *= 20
    img += base + ramp[..., None] * tilt
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _place(rng, region, scale, aspect, taken):
    """Pick an integer box inside ``region`` whose long side is ``scale`` x its short side,
    preferring spots that barely overlap ``taken`` so every object stays visible."""
    rx, ry, rw, rh = region
    long_side = rng.uniform(*scale) * min(rw, rh)
    ratio = rng.uniform(*aspect)  # height / width
    w, h = (long_side, long_side * ratio) if ratio <= 1 else (long_side / ratio, long_side)
    w, h = min(max(int(w), 4), rw), min(max(int(h), 4), rh)
    best = None
    for _ in range(10):
        box = (rx + int(rng.integers(0, rw - w + 1)), ry + int(rng.integers(0, rh - h + 1)), w, h)
        overlap = max((_intersection(box, t) for t in taken), default=0) / (w * h)
        if best is None or overlap < best[0]:
            best = (overlap, box)
        if overlap < 0.15:
            break
    taken.append(best[1])
    return best[1]


def _intersection(a, b):
    dx = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    dy = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    return max(dx, 0) * max(dy, 0)


def _draw_instance(draw, mask_draw, rng, name, box, look=Look()):
    """Draw one object filling ``box`` on the image and its mask; return its COCO polygon.

    The outline spans w - 1 in PIL's pixel indices but w in the JSON: COCO's coordinates are
    continuous, and those same pixels cover [x, x + w), so the box is the polygon's extent."""
    kind, base, _ = STYLES[name]
    x, y, w, h = box
    unit = _outline(kind)
    pts = [(x + round(u * (w - 1)), y + round(v * (h - 1))) for u, v in unit]
    colour = _jitter(rng, base, look)
    draw.polygon(pts, fill=colour)
    mask_draw.polygon(pts, fill=255)
    if name == "train" and h >= 6:  # windows: a texture cue besides the colour
        side, n = max(2, int(h * 0.35)), max(2, w // h)
        dark = tuple(c * 4 // 10 for c in colour)
        for i in range(n):
            wx = x + int((i + 0.5) * w / n) - side // 2
            draw.rectangle([wx, y + h // 5, wx + side - 1, y + h // 5 + side - 1], fill=dark)
    elif name == "airplane":
        draw.rectangle([x + int(0.4 * w), y + int(0.4 * h), x + int(0.6 * w), y + int(0.6 * h)],
                       fill=(235, 235, 240))
    return [[round(c, 2) for u, v in unit for c in (x + u * w, y + v * h)]]


def _annotation(name, mask, segmentation, iscrowd):
    """COCO fields for a drawn mask: the bbox is the drawn pixels' extent, never the plan."""
    xs, ys = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    x0, y0 = int(xs[0]), int(ys[0])
    bw, bh = int(xs[-1]) - x0 + 1, int(ys[-1]) - y0 + 1
    area = float(mask.sum())
    if iscrowd:  # crowds are labelled as their box, in uncompressed RLE like COCO's crowds
        box = np.zeros_like(mask)
        box[y0:y0 + bh, x0:x0 + bw] = True
        segmentation = {"counts": _rle_counts(box), "size": list(mask.shape)}
        area = float(bw * bh)
    return {"segmentation": segmentation, "area": area, "iscrowd": int(iscrowd),
            "bbox": [float(x0), float(y0), float(bw), float(bh)], "category_id": CATEGORY_ID[name]}


def _rle_counts(mask):
    """Run lengths over the column-major (Fortran) order COCO uses, starting with a 0-run."""
    flat = mask.ravel(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return [0] + counts if flat[0] else counts


def _draw_object(draw, rng, name, size, taken, crowd=False, look=Look()):
    mask = Image.new("L", size)
    mask_draw, style_aspect = ImageDraw.Draw(mask), STYLES[name][2]
    if not crowd:
        box = _place(rng, (0, 0, *size), look.scale, style_aspect, taken)
        polygon = _draw_instance(draw, mask_draw, rng, name, box, look)
        for _ in range(int(rng.integers(0, look.occluders + 1)) if look.occluders else 0):
            _occlude(draw, rng, box)
        return _annotation(name, np.asarray(mask) > 0, polygon, 0)
    region, inside = _place(rng, (0, 0, *size), (0.4, 0.6), (0.6, 1.0), taken), []
    for _ in range(int(rng.integers(4, 7))):
        _draw_instance(draw, mask_draw, rng, name, _place(rng, region, (0.3, 0.45),
                                                          style_aspect, inside))
    return _annotation(name, np.asarray(mask) > 0, None, 1)


def _object_names(rng, case, target):
    if case in ("single", "grayscale"):
        return [target] * int(rng.integers(1, 4))
    if case == "with_distractors":
        return [target, *rng.choice(DISTRACTORS, int(rng.integers(1, 3)), replace=False)]
    if case == "two_targets":
        return [target, rng.choice([c for c in TARGETS if c != target])]
    if case == "distractors_only":
        return list(rng.choice(DISTRACTORS, int(rng.integers(1, 4)), replace=False))
    if case == "negative":  # ``target`` is the kind
        return [target] * int(rng.integers(1, 4))
    return [] if case == "no_annotations" else [target]


def _occlude(draw, rng, box):
    """A bar of a random grey across part of ``box``, as a post or a branch in front of it
    (drawn over the object; its annotation keeps the whole shape)."""
    x, y, w, h = box
    grey = int(rng.integers(40, 200))
    if rng.random() < 0.5:
        left = x + int(rng.integers(0, w))
        draw.rectangle([left, y, left + max(1, w // 5), y + h - 1], fill=(grey,) * 3)
    else:
        top = y + int(rng.integers(0, h))
        draw.rectangle([x, top, x + w - 1, top + max(1, h // 5)], fill=(grey,) * 3)


def _clutter(draw, rng, size, look):
    """Unlabelled shapes of any colour behind the objects: no COCO category, background."""
    for _ in range(int(rng.integers(0, look.clutter + 1))):
        cx, cy = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        r = rng.uniform(0.05, 0.2) * min(size)
        points = [(cx + r * rng.uniform(0.5, 1) * math.cos(a), cy + r * rng.uniform(0.5, 1)
                   * math.sin(a)) for a in np.linspace(0, 2 * math.pi, int(rng.integers(3, 7)),
                                                       endpoint=False)]
        draw.polygon(points, fill=tuple(int(v) for v in rng.integers(0, 256, size=3)))


def _render(rng, case, target, size, look=Look()):
    """One image for ``case``; returns the PIL image and its annotations without ids."""
    img = _background(rng, *size)
    draw, taken, anns = ImageDraw.Draw(img), [], []
    if look.clutter:
        _clutter(draw, rng, size, look)
    if case in ("crowd_same_class", "crowd_other_class"):
        crowd = target if case == "crowd_same_class" else str(rng.choice(DISTRACTORS))
        anns.append(_draw_object(draw, rng, crowd, size, taken, crowd=True))
    anns += [_draw_object(draw, rng, str(n), size, taken, look=look)
             for n in _object_names(rng, case, target)]
    return (img.convert("L") if case == "grayscale" else img), anns


def _plan(rng, n, ratios):
    """Cases with guaranteed minimum counts, target classes cycled in proportion to ``ratios``,
    then shuffled."""
    counts = {c: max(1, round(f * n)) for c, f in CASE_FRACTIONS.items()}
    counts = {"single": n - sum(counts.values()), **counts}
    plan = []
    for case, count in counts.items():
        start = int(rng.integers(len(TARGETS)))
        plan += [(case, TARGETS[t]) for t in _cycle(ratios, start, count)]
    return [plan[i] for i in rng.permutation(n)], counts


def _cycle(ratios, start, count):
    """``count`` class indices, from ``start`` on, each class's share of any stretch within one
    of ``ratios``' (smooth weighted round robin); equal ratios give start, start + 1, ...
    (mod 4)."""
    order = [(start + i) % len(ratios) for i in range(len(ratios))]
    credit, total, picks = [0.0] * len(ratios), sum(ratios), []
    for _ in range(count):
        for t in order:
            credit[t] += ratios[t]
        best = max(order, key=lambda t: credit[t])  # the first of equals, in cycle order
        credit[best] -= total
        picks.append(best)
    return picks


def parse_ratios(text: str) -> tuple[float, ...]:
    """``--class-ratios 1,1,1,0.33``: one positive number per target class, in TARGETS order."""
    parts = text.split(",")
    try:
        ratios = tuple(float(p) for p in parts)
    except ValueError:
        ratios = ()
    if len(ratios) != len(TARGETS) or not all(0 < r < math.inf for r in ratios):
        raise Coco4Error(f"--class-ratios {text!r}: give {len(TARGETS)} positive numbers "
                         f"separated by commas, one per class in the order "
                         f"{','.join(TARGETS)} (e.g. 1,1,1,0.33 for a third as many boats)")
    return ratios


def _write_split(root, split, n, seed, id_offset, image_sizes, progress, ratios, negatives=0,
                 look=Look()):
    rng = np.random.default_rng([seed, id_offset])  # each split independent of the other's size
    plan, counts = _plan(rng, n, ratios)
    ids = np.sort(rng.choice(ID_SPAN - 1, size=n, replace=False)) + 1 + id_offset
    rows = list(zip(ids.tolist(), plan))
    folder = root / "images" / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    images, anns, kept = [], [], []
    # the extra negatives come after the planned images, from a generator of their own: asking
    # for them leaves every planned image as it was
    extra = np.random.default_rng([seed, id_offset, 1])
    for image_id, (case, target) in tqdm(rows + _negative_rows(extra, negatives, ids, id_offset),
                                         desc=split, unit="img", disable=not progress):
        draw_rng = extra if case == "negative" else rng
        size = tuple(image_sizes[int(draw_rng.integers(len(image_sizes)))])
        img, objects = _render(draw_rng, case, target, size, look)
        file_name = f"{image_id:012d}.jpg"
        img.save(folder / file_name, quality=JPEG_QUALITY)
        if case in KEPT_CASES:
            kept.append((file_name, TARGETS.index(target)))
        images.append({"license": 1, "file_name": file_name, "coco_url": "", "height": size[1],
                       "width": size[0], "date_captured": "2017-01-01 00:00:00",
                       "flickr_url": "", "id": image_id})
        # Unique across splits because image ids are; 100 leaves room for any object count.
        anns += [{**a, "image_id": image_id, "id": image_id * 100 + k}
                 for k, a in enumerate(objects)]
    info = {"description": f"coco4 synthetic COCO-format dataset, seed {seed}", "url": "",
            "version": "1.0", "year": 2017, "contributor": "coco4", "date_created": "2017/01/01"}
    dataset = {"info": info, "licenses": [LICENSE], "images": images, "annotations": anns,
               "categories": [dict(c) for c in COCO_CATEGORIES]}
    # Written after the images, so an existing JSON means the split is complete.
    atomic_write_text(root / "annotations" / f"instances_{split}2017.json",
                      json.dumps(dataset, separators=(",", ":")))
    return {"images": len(images), "annotations": len(anns), "cases": counts,
            "negatives": negatives, "kept": sorted(kept, key=lambda pair: pair[::-1])}


def _negative_rows(rng, n, taken, id_offset):
    """``n`` images of 1-3 objects of one kind of NEGATIVE_KINDS each (the kinds cycled, so
    each has about as many), at ids the planned images do not use."""
    free = np.setdiff1d(np.arange(1, ID_SPAN), taken - id_offset)
    ids = np.sort(rng.choice(free, size=n, replace=False)) + id_offset
    kinds = [NEGATIVE_KINDS[i % len(NEGATIVE_KINDS)] for i in rng.permutation(n)]
    return [(int(i), ("negative", kind)) for i, kind in zip(ids, kinds)]


def make_synthetic_coco(root: str | Path, num_train: int = 240, num_val: int = 80,
                        seed: int = 0, image_sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
                        progress: bool = True, lists_dir: str | Path | None = None,
                        class_ratios: Sequence[float] | None = None,
                        negatives: tuple[int, int] = (0, 0), look: "Look" = None) -> dict:
    """Write the train and val splits under ``root``; return counts per split and per case.

    ``look`` (``HARD``, or the default ``Look()``) sets how hard the images are.

    ``negatives`` (train, val) adds that many images of none of the target classes to each
    split, 1-3 objects of one of NEGATIVE_KINDS each (nine categories of eight
    supercategories): the material of ``annotation_prepare.py --other``. The other images are
    the same with or without them.

    ``class_ratios`` (one per TARGETS class) makes train2017 imbalanced, e.g. (1, 1, 1, 0.33)
    for a third as many boats, as in real COCO; val2017 (the demo's test set) stays balanced,
    so every class's test accuracy is measured on as many images.

    With ``lists_dir``, also write there the lists ``annotation_prepare.py`` makes of them
    (the same images and labels, grouped by label), from what the generator drew rather than
    through pycocotools: for machines without it, such as the GPU check's.
    """
    for name, n in (("num_train", num_train), ("num_val", num_val)):
        if not len(CASES) <= n < ID_SPAN:
            raise Coco4Error(f"{name}={n}: need between {len(CASES)} (one image per case) "
                             f"and {ID_SPAN - 1} images per split")
    if seed < 0:
        raise Coco4Error(f"seed={seed}: must be 0 or more")
    if not image_sizes or any(min(s) < MIN_SIDE for s in image_sizes):
        raise Coco4Error(f"image_sizes {image_sizes!r}: give (width, height) pairs with both "
                         f"sides at least {MIN_SIDE} pixels")
    if class_ratios is not None:
        parse_ratios(",".join(str(r) for r in class_ratios))  # the same check as the flag's
    if not all(0 <= k <= ID_SPAN // 2 for k in negatives):
        raise Coco4Error(f"negatives={negatives}: between 0 and {ID_SPAN // 2} per split")
    root = Path(root)
    check_writable(root)
    if lists_dir is not None:
        check_writable(lists_dir)
    summary = {"root": str(root)}
    for (split, n, offset), extra in zip((("train", num_train, 0), ("val", num_val, ID_SPAN)),
                                         negatives):
        ratios = class_ratios if split == "train" and class_ratios else (1,) * len(TARGETS)
        summary[split] = _write_split(root, split, n, seed, offset, image_sizes, progress,
                                      tuple(ratios), extra, look or Look())
    if lists_dir is not None:
        for split in ("train", "val"):
            write_list(Path(lists_dir) / f"annotation_{split}.txt",
                       *zip(*summary[split]["kept"]))
        write_classes(lists_dir, TARGETS)
    return summary


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Write a synthetic COCO-format dataset of "
                                     "the 4 target classes plus distractors.")
    parser.add_argument("--root", required=True, help="output folder (COCO layout)")
    parser.add_argument("--num-train", type=int, default=240)
    parser.add_argument("--num-val", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--coco-size", action="store_true",
                        help="640x480 / 480x640 images like COCO, instead of ~90x80 ones")
    parser.add_argument("--lists", type=Path, default=None,
                        help="also write annotation_prepare.py's lists here, without pycocotools")
    parser.add_argument("--class-ratios", default=None,
                        help="train2017's share of each class, in the order "
                             f"{','.join(TARGETS)}: 1,1,1,0.33 for a third as many boats")
    parser.add_argument("--hard", action="store_true",
                        help="harder images: smaller objects, straying colours, clutter, bars "
                             "across the objects")
    parser.add_argument("--negatives", type=int, nargs=2, default=(0, 0), metavar=("TRAIN", "VAL"),
                        help="extra images of none of the target classes per split, for "
                             "annotation_prepare.py --other")
    return parser


def main(args: argparse.Namespace) -> dict:
    sizes = COCO_SIZES if args.coco_size else DEFAULT_SIZES
    ratios = parse_ratios(args.class_ratios) if args.class_ratios else None
    summary = make_synthetic_coco(args.root, args.num_train, args.num_val, args.seed, sizes,
                                  lists_dir=args.lists, class_ratios=ratios,
                                  negatives=tuple(args.negatives),
                                  look=HARD if args.hard else Look())
    for split in ("train", "val"):
        s = summary[split]
        print(f"{split}: {s['images']} images, {s['annotations']} annotations, cases {s['cases']}"
              f" -> {summary['root']}/images/{split}2017")
    return summary


if __name__ == "__main__":
    from .cli import run

    run(main, get_args_parser())
