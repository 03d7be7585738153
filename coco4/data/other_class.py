"""``annotation_prepare.py --other N``: a last class, ``other``, of COCO images that hold none of
the target classes, so that a model can answer "none of these"; and the lists of such images
kept apart to measure how well a model rejects them (``evaluate.py --negatives``).

Which images: those with at least one annotation and none of a target class, crowd annotations
included (a crowd of people is a real scene of no target). Images without any annotation are
left out: nothing says what they show, and a bird nobody annotated would teach ``other`` to
take birds. The sample is spread over what the images show: each image's kind is the
supercategory of its largest annotation (person, vehicle, animal, food, ...), and the kinds
share the N images as evenly as their numbers allow, instead of COCO's own mix, which is
mostly people. Some kinds are held out altogether (``holdout``): no image holding an object of
them is in the sample, and the val2017 images of nothing else make the second list of
negatives, of kinds the model never saw as ``other``.
"""
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import Coco4Error

if TYPE_CHECKING:
    from pycocotools.coco import COCO

OTHER = "other"
HELD_OUT_KINDS = 2  # the seeded choice of kinds held out, when none are named
NEGATIVES_AT_MOST = 1000  # images in each list of negatives: enough for the figures, quick to run
# the lists of negatives, beside the class lists
SEEN_NEGATIVES = "negatives_val_seen_kinds.txt"
HELD_OUT_NEGATIVES = "negatives_val_held_out_kinds.txt"


@dataclass(frozen=True)
class OtherSpec:
    count: int  # training images of ``other``; 0: no class, only the lists of negatives
    holdout: tuple[str, ...] | None = None  # category or supercategory names; None: a seeded choice
    seed: int = 0


def negative_images(coco: "COCO", target_ids: Sequence[int]) -> tuple[dict, int]:
    """({image id: its annotations} of the images with annotations, none of a target class;
    how many images have no annotation at all)."""
    by_image, targets = {}, set(target_ids)
    for ann in coco.dataset["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    negatives = {i: anns for i, anns in by_image.items()
                 if not any(a["category_id"] in targets for a in anns)}
    return negatives, len(coco.dataset["images"]) - len(by_image)


def kind_of(anns: list[dict], supercategory: dict) -> str:
    """What an image shows, for spreading the sample: its largest annotation's supercategory
    (the smallest category id among equals)."""
    largest = max(anns, key=lambda a: (a.get("area", 0), -a["category_id"]))
    return supercategory[largest["category_id"]]


def held_out_ids(coco: "COCO", spec: OtherSpec, negatives: dict,
                 target_ids: Sequence[int]) -> set[int]:
    """The category ids held out: those ``spec.holdout`` names (a category or a supercategory
    name each; ``none`` for none), or a seeded choice of HELD_OUT_KINDS supercategories among
    the negatives' kinds, never the commonest (COCO's people); never a target class."""
    cats = coco.dataset["categories"]
    if spec.holdout is None:
        kinds = Counter(kind_of(a, {c["id"]: c["supercategory"] for c in cats})
                        for a in negatives.values())
        choices = sorted(k for k, _ in kinds.most_common()[1:])
        rng = np.random.default_rng([spec.seed, 1])
        names = rng.choice(choices, min(HELD_OUT_KINDS, len(choices)), replace=False).tolist()
    else:
        names = [n for n in spec.holdout if n != "none"]
    targets = sorted(set(names) & {c["name"] for c in cats if c["id"] in target_ids})
    if targets:
        raise Coco4Error(f"--other-holdout names {', '.join(targets)}, one of the classes: "
                         "images of the classes are never negatives; hold out other kinds")
    known = {c["name"] for c in cats} | {c["supercategory"] for c in cats}
    unknown = sorted(set(names) - known)
    if unknown:
        raise Coco4Error(f"--other-holdout names unknown categories {unknown}; give COCO "
                         "category or supercategory names, or none")
    return {c["id"] for c in cats if (c["name"] in names or c["supercategory"] in names)
            and c["id"] not in target_ids}


def spread(groups: dict[str, list], n: int, rng: np.random.Generator) -> list:
    """``n`` items drawn from ``groups`` as evenly as their sizes allow: each group its equal
    share, the share a small group cannot fill going to the others; seeded."""
    share, left, todo = {}, n, sorted(groups, key=lambda g: (len(groups[g]), g))
    for k, group in enumerate(todo):  # smallest first: what they cannot take passes on
        share[group] = min(len(groups[group]), left // (len(todo) - k))
        left -= share[group]
    return [item for group in sorted(groups)
            for item in rng.choice(groups[group], share[group], replace=False).tolist()]


class OtherSampler:
    """Draws the ``other`` images of each list, the train list first (which fixes the kinds
    held out and the count the val list's share is taken of), then the val list, and with it
    the two lists of val2017 negatives; ``report`` is what report.json says of them."""

    def __init__(self, spec: OtherSpec):
        self.spec, self.rng = spec, np.random.default_rng([spec.seed, 0])
        self.held, self.train_kept, self.negatives = None, 0, {}
        self.report = {"count": spec.count, "seed": spec.seed}

    def split(self, split: str, coco: "COCO", target_ids: Sequence[int], kept: int) -> list[str]:
        """This split's ``other`` file names (sorted); ``kept``: its list's other images."""
        negatives, unannotated = negative_images(coco, target_ids)
        if split == "train":
            self.held = held_out_ids(coco, self.spec, negatives, target_ids)
            self.train_kept, n = kept, self.spec.count
            self.report["held_out"] = sorted(c["name"] for c in coco.dataset["categories"]
                                             if c["id"] in self.held)
        else:  # the val list's share: as many per image of the four classes as in train
            n = round(self.spec.count * kept / max(self.train_kept, 1))
        groups, sizes = _seen_kinds(coco, negatives, self.held)
        if sum(sizes.values()) < n:
            raise Coco4Error(f"--other {self.spec.count} asks for {n} {split}2017 images of none "
                             f"of the classes, and there are {sum(sizes.values())} of the kinds "
                             "not held out; ask for fewer")
        chosen = spread(groups, n, self.rng)
        self.report[split] = _split_report(coco, chosen, negatives, self.held, sizes,
                                           unannotated)
        if split == "val":
            self._negatives(coco, groups, chosen, negatives)
        return sorted(_files(coco, chosen))

    def _negatives(self, coco, groups, chosen, negatives) -> None:
        taken = set(chosen)
        seen = [i for group in groups.values() for i in group if i not in taken]
        held_out = [i for i, anns in negatives.items()
                    if all(a["category_id"] in self.held for a in anns)]
        for name, ids in ((SEEN_NEGATIVES, seen), (HELD_OUT_NEGATIVES, held_out)):
            self.negatives[name] = _at_most(self.rng, sorted(_files(coco, ids)))
        self.report["negatives"] = {name: len(v) for name, v in self.negatives.items()}


def _seen_kinds(coco, negatives, held) -> tuple[dict, Counter]:
    """The negatives holding no held-out object, grouped by kind, and each kind's count."""
    supercategory = {c["id"]: c["supercategory"] for c in coco.dataset["categories"]}
    groups = {}
    for image_id in sorted(negatives):
        anns = negatives[image_id]
        if not any(a["category_id"] in held for a in anns):
            groups.setdefault(kind_of(anns, supercategory), []).append(image_id)
    return groups, Counter({k: len(v) for k, v in groups.items()})


def _split_report(coco, chosen, negatives, held, sizes, unannotated) -> dict:
    supercategory = {c["id"]: c["supercategory"] for c in coco.dataset["categories"]}
    kinds = Counter(kind_of(negatives[i], supercategory) for i in chosen)
    return {"images": len(chosen), "kinds": dict(sorted(kinds.items())),
            "available": dict(sorted(sizes.items())),
            "left_out": {"no_annotation": unannotated,
                         "holding_held_out_kinds": sum(
                             any(a["category_id"] in held for a in anns)
                             for anns in negatives.values())}}


def _files(coco, image_ids) -> list[str]:
    return [coco.imgs[i]["file_name"] for i in image_ids]


def _at_most(rng, names: list[str]) -> list[str]:
    if len(names) <= NEGATIVES_AT_MOST:
        return names
    return sorted(rng.choice(names, NEGATIVES_AT_MOST, replace=False).tolist())
