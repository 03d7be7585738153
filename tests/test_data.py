"""Reading images as RGB, the list dataset, the unusable-image scan, and the image transforms."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from coco4.data.images import ListDataset, UnreadableImage, find_unusable, read_rgb
from coco4.data.lists import ImageList
from coco4.data.transforms import (
    pil_eval_transform,
    pil_resize,
    precrop_size,
    random_crops,
    random_resized_crop_boxes,
    resized_crops,
    resized_crops_each,
)

from conftest import smooth_images

W, H = 30, 18  # a non-square size, so a width/height swap shows


def noisy_rgb(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


def truncated_jpeg(path):
    full = path.with_name("full_" + path.name)
    noisy_rgb(64, 64).save(full, quality=90)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    full.unlink()
    return path


# ---------------------------------------------------------------- read_rgb


def _check_rgb(im, size=(W, H)):
    assert im.mode == "RGB" and im.size == size
    return np.asarray(im).astype(int)


def test_grayscale_jpeg(tmp_path):
    p = tmp_path / "gray.jpg"
    Image.new("L", (W, H), 100).save(p)
    px = _check_rgb(read_rgb(p))
    assert np.abs(px - 100).max() <= 2 and (px[..., 0] == px[..., 2]).all()


def test_palette_png(tmp_path):
    p = tmp_path / "pal.png"
    im = Image.new("P", (W, H), 0)
    im.putpalette([10, 200, 30, 250, 5, 120] + [0] * 762)
    im.putpixel((3, 4), 1)
    im.save(p)
    px = _check_rgb(read_rgb(p))
    assert tuple(px[0, 0]) == (10, 200, 30) and tuple(px[4, 3]) == (250, 5, 120)


def test_rgba_png(tmp_path):
    p = tmp_path / "rgba.png"
    Image.new("RGBA", (W, H), (200, 20, 40, 128)).save(p)
    px = _check_rgb(read_rgb(p))
    assert (px == (200, 20, 40)).all()


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (W, H), (0, 255, 255, 0)).save(p)  # pure red in CMYK
    px = _check_rgb(read_rgb(p))
    assert px[..., 0].min() > 220 and px[..., 1:].max() < 40


def test_png_named_jpg(tmp_path):
    p = tmp_path / "really_a_png.jpg"
    Image.new("RGB", (W, H), (1, 2, 3)).save(p, format="PNG")
    px = _check_rgb(read_rgb(p))
    assert (px == (1, 2, 3)).all()


def test_exif_orientation_is_applied(tmp_path):
    stored = Image.new("RGB", (40, 20), (255, 255, 255))
    stored.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p, plain = tmp_path / "rotated.jpg", tmp_path / "plain.jpg"
    stored.save(p, exif=exif, quality=95)
    stored.save(plain, quality=95)

    assert read_rgb(plain).size == (40, 20)
    im = read_rgb(p)
    px = _check_rgb(im, size=(20, 40))
    # rotating 90 degrees clockwise takes the top-left corner to the top-right
    assert tuple(px[4, 15]) == pytest.approx((255, 0, 0), abs=30)
    assert tuple(px[4, 4]) == pytest.approx((255, 255, 255), abs=30)
    assert tuple(px[35, 15]) == pytest.approx((255, 255, 255), abs=30)


@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
def test_unreadable_files(tmp_path, kind):
    p = tmp_path / f"{kind}.jpg"
    if kind == "truncated":
        truncated_jpeg(p)
    elif kind == "empty":
        p.write_bytes(b"")
    else:
        p.write_text("this is not an image\n")
    with pytest.raises(UnreadableImage) as err:
        read_rgb(p)
    assert str(p) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_rgb(tmp_path / "nope.jpg")


# ---------------------------------------------------------------- dataset and scan


def test_list_dataset_gray_images(tmp_path):
    sizes, labels = [(50, 30), (20, 44), (37, 37)], [2, 0, 1]
    for i, (size, value) in enumerate(zip(sizes, (30, 128, 220))):
        Image.new("L", size, value).save(tmp_path / f"{i}.jpg")
    lst = ImageList(tmp_path / "l.txt", tuple(f"{i}.jpg" for i in range(3)), tuple(labels))
    ds = ListDataset(lst, tmp_path, pil_eval_transform(32))
    assert len(ds) == 3
    for i, value in enumerate((30, 128, 220)):
        x, y = ds[i]
        assert y == labels[i]
        # uint8 pixels, as the cache holds them: the model normalises (test_model.py)
        assert x.shape == (3, 37, 37) and x.dtype == torch.uint8
        assert (x.int() - value).abs().max() <= 3  # the gray value in all three channels


def test_find_unusable_reports_index_and_reason(tmp_path):
    noisy_rgb(20, 20).save(tmp_path / "good.jpg")
    truncated_jpeg(tmp_path / "trunc.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    files = ["good.jpg"] * 45
    # past the scan's first batch of 32 too, so indices must be global
    files[1], files[20], files[33], files[44] = "nope.jpg", "trunc.jpg", "empty.jpg", "text.jpg"
    lst = ImageList(tmp_path / "l.txt", tuple(files), (0,) * len(files))

    bad = find_unusable(lst, tmp_path, workers=0, progress=False)
    assert set(bad) == {1, 20, 33, 44}
    assert bad[1] == "missing"
    for i in (20, 33, 44):
        assert bad[i].startswith("unreadable"), bad[i]
    assert "truncated" in bad[20]
    assert find_unusable(lst, tmp_path, workers=2, progress=False) == bad


def test_find_unusable_all_good(tmp_path):
    noisy_rgb(20, 20).save(tmp_path / "a.jpg")
    Image.new("L", (9, 7)).save(tmp_path / "b.jpg")
    lst = ImageList(tmp_path / "l.txt", ("a.jpg", "b.jpg"), (0, 1))
    assert find_unusable(lst, tmp_path, progress=False) == {}


# ---------------------------------------------------------------- transforms


def test_precrop_size():
    assert precrop_size(224) == 256
    assert precrop_size(32) == 37
    assert precrop_size(448) == 512


def test_eval_transform_equals_cache_path():
    """The cache stores pil_resize's uint8 pixels; they must be exactly the pixels the PIL eval
    pipeline gives, or cached and uncached evaluation disagree."""
    for seed, (w, h) in enumerate([(50, 40), (37, 37), (23, 61)]):
        img = noisy_rgb(w, h, seed)
        ref = pil_eval_transform(32)(img)
        u8 = torch.from_numpy(np.asarray(pil_resize(img, precrop_size(32))).copy())
        got = u8.permute(2, 0, 1)
        assert ref.shape == got.shape == (3, 37, 37) and ref.dtype == torch.uint8
        assert torch.equal(ref, got)
    # and they are the original protocol's first step: a 37 x 37 bilinear resize
    reference = T.Resize((37, 37))(img)
    assert torch.equal(ref, torch.from_numpy(np.asarray(reference).copy()).permute(2, 0, 1))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("height,width", [(256, 256), (100, 300), (300, 100), (37, 37),
                                          (10, 1000), (1, 1), (2, 5)])
def test_crop_boxes_inside_image(height, width):
    boxes = random_resized_crop_boxes(5000, height, width, _gen(0))
    assert boxes.shape == (5000, 4) and boxes.dtype == torch.int64
    top, left, h, w = boxes.unbind(1)
    assert (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()


def test_crop_boxes_deterministic_per_seed():
    a = random_resized_crop_boxes(200, 120, 90, _gen(5))
    b = random_resized_crop_boxes(200, 120, 90, _gen(5))
    c = random_resized_crop_boxes(200, 120, 90, _gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("height,width", [(10, 1000), (1000, 10)])
def test_crop_boxes_fallback_matches_torchvision(height, width):
    """No try fits such an image: torchvision's deterministic clamped centre crop is used."""
    tv = T.RandomResizedCrop.get_params(torch.empty(1, height, width), [0.08, 1.0], [3 / 4, 4 / 3])
    boxes = random_resized_crop_boxes(50, height, width, _gen(0))
    assert (boxes == torch.tensor(tv)).all()


def ks_statistic(a, b):
    """Two-sample Kolmogorov-Smirnov D = max |F_a - F_b| over all points, ties included."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return np.abs(fa - fb).max()


def _box_stats(boxes, height, width):
    top, left, h, w = (np.asarray(c, dtype=np.float64) for c in boxes.T)
    return {"area": h * w / (height * width),
            "aspect": w / h,
            # the offset as a fraction of its free range: uniform on (0, 1), 0.5 when none
            "top": (top + 0.5) / (height - h + 1),
            "left": (left + 0.5) / (width - w + 1)}


@pytest.mark.parametrize("height,width", [(256, 256), (100, 300)])
def test_crop_boxes_distribution_matches_torchvision(height, width):
    n = 20_000
    ours = random_resized_crop_boxes(n, height, width, _gen(1)).numpy()
    with torch.random.fork_rng():
        torch.manual_seed(2)
        img = torch.empty(1, height, width)
        tv = np.array([T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
                       for _ in range(n)])
    a, b = _box_stats(ours, height, width), _box_stats(tv, height, width)
    for key in a:
        x, y = a[key], b[key]
        # Means: the difference of two independent sample means has standard error
        # sqrt(var_x/n + var_y/n) (~0.003 for the area fraction); 5 of them is a
        # false-alarm rate below 1e-6, while a wrong range or law moves the mean far more.
        se = math.sqrt(x.var() / n + y.var() / n)
        assert abs(x.mean() - y.mean()) < 5 * se, (key, x.mean(), y.mean(), se)
        # Quantiles, in probability units: torchvision's empirical CDF at our p-quantile is p
        # up to a standard error of at most sqrt(2 * 0.25 / n) = 0.005; 0.02 is 4 of them.
        for p in (0.1, 0.25, 0.5, 0.75, 0.9):
            q = np.quantile(x, p)
            lo, hi = (y < q).mean(), (y <= q).mean()  # ties: the CDF jumps over [lo, hi]
            assert lo - 0.02 <= p <= hi + 0.02, (key, p, lo, hi)
        # KS: under equal laws sqrt(n/2) * D follows Kolmogorov's law, P(D > 0.03) =
        # P(100 D > 3) ~ 2 exp(-18) ~ 3e-8 (less still for discrete values); a log-uniform
        # vs uniform aspect ratio alone gives D ~ 0.07.
        assert ks_statistic(x, y) < 0.03, key


def _crops(images, seed, size=32):
    boxes, flips = random_crops(len(images), *images.shape[2:], _gen(seed))
    rows = torch.arange(len(images))
    return resized_crops(images, boxes, flips, size), resized_crops_each(images, rows, boxes,
                                                                         flips, size)


def test_crops_shapes_determinism_and_range():
    images = torch.randint(0, 256, (6, 3, 37, 37), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    for a, b, c in zip(_crops(images, 3), _crops(images, 3), _crops(images, 4)):
        assert a.shape == (6, 3, 32, 32) and a.dtype == torch.uint8
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        # bilinear sampling inside the image averages pixels: never outside their range
        for i in range(6):
            for ch in range(3):
                low, high = images[i, ch].min(), images[i, ch].max()
                assert low <= a[i, ch].min() <= a[i, ch].max() <= high


def test_batched_and_per_image_crops_agree():
    """The GPU resampler (roi_align, one batched kernel) and the CPU one (antialiased uint8
    resize per image) see the same boxes and flips; on smooth images they agree to within a few
    grey levels (antialiasing differs slightly where a crop is shrunk, by at most 256/224)."""
    batched, each = _crops(smooth_images(8), 5)
    diff = (batched.float() - each.float()).abs()
    assert diff.mean() < 1.5 and diff.max() <= 12


def test_cpu_crops_run_each_small_resize_in_one_thread(monkeypatch):
    """Split over threads, each small resize waits in a barrier for a thread that a busy
    machine has descheduled (6x slower under load, measured). The model's own large
    operations keep every thread: the setting is restored after the crops."""
    import coco4.data.transforms as transforms

    threads, seen = torch.get_num_threads(), []
    real = transforms.F.interpolate
    monkeypatch.setattr(transforms.F, "interpolate",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or real(*a, **k))
    torch.set_num_threads(2)
    try:
        images = smooth_images(3).permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        boxes, flips = random_crops(3, 37, 37, _gen(0))
        resized_crops_each(images, torch.arange(3), boxes, flips, 32)
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_gpu_crops_come_channels_last_as_the_convolutions_want_them():
    images = smooth_images(4)
    boxes, flips = random_crops(4, 37, 37, _gen(0))
    out = resized_crops(images, boxes, flips, 32)
    assert out.shape == (4, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_crops_in_chunks_equal_the_whole_batch_at_once():
    """The GPU resampler works ``chunk`` images at a time to bound its float copies; where the
    chunks fall must not change a pixel (each chunk's boxes index its own images)."""
    images = torch.randint(0, 256, (23, 3, 37, 37), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    boxes, flips = random_crops(23, 37, 37, _gen(2))
    whole = resized_crops(images, boxes, flips, 32, chunk=64)
    for chunk in (1, 5, 22):
        assert torch.equal(resized_crops(images, boxes, flips, 32, chunk=chunk), whole)
    assert not torch.equal(whole[:5], whole[5:10])


def test_crops_of_a_constant_image_stay_constant():
    colours = torch.tensor([[10, 128, 250], [0, 0, 0], [255, 255, 255], [77, 3, 190]],
                           dtype=torch.uint8)
    images = colours.view(4, 3, 1, 1).expand(4, 3, 37, 37).contiguous()
    for seed in range(3):
        for out in _crops(images, seed):
            assert out.shape == (4, 3, 32, 32)
            assert torch.equal(out, colours.view(4, 3, 1, 1).expand(4, 3, 32, 32))


ODD_FILES = """
import json, os, sys
from pathlib import Path
from PIL import Image
sys.path.insert(0, sys.argv[2])
from coco4.data import cache, images
from coco4.data.lists import write_list, read_list
folder = Path(sys.argv[1])
Image.new("RGB", (40, 30), (200, 10, 10)).save(folder / "good.jpg")
os.mkfifo(folder / "fifo.jpg")                       # would block an open() forever
os.symlink("loop_b.jpg", folder / "loop_a.jpg")      # a symlink loop
os.symlink("loop_a.jpg", folder / "loop_b.jpg")
(folder / "file.jpg").write_bytes(b"x")              # file.jpg/inner.jpg: a path through a file
(folder / "folder.jpg").mkdir()
os.symlink("/dev/null", folder / "device.jpg")       # a character device
names = ["good.jpg", "fifo.jpg", "loop_a.jpg", "file.jpg/inner.jpg", "folder.jpg",
         "device.jpg", "x" * 300 + ".jpg"]
write_list(folder / "list.txt", names, [0] * len(names))
built = cache.load_or_build(read_list(folder / "list.txt"), folder, 32, folder / "cache",
                            progress=False)
pil = images.find_unusable(read_list(folder / "list.txt"), folder, progress=False)
print(json.dumps({"fast": {names[i]: why for i, why in built.bad.items()},
                  "pil": {names[i]: why for i, why in pil.items()}}))
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_odd_files_are_unusable_with_a_reason_and_never_hang(tmp_path):
    """Real FIFOs, symlink loops, devices, folders, paths through a file and names too long, on
    both data paths: each image is left out with why, the good one is kept, nothing blocks."""
    from conftest import REPO

    proc = subprocess.run([sys.executable, "-c", ODD_FILES, str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout)
    for path in ("fast", "pil"):
        bad = found[path]
        assert "good.jpg" not in bad
        assert bad["fifo.jpg"] == "unreadable: not a regular file (a FIFO)"
        assert bad["device.jpg"] == "unreadable: not a regular file (a character device)"
        assert bad["folder.jpg"] == "unreadable: not a regular file (a folder)"
        assert "Too many levels of symbolic links" in bad["loop_a.jpg"]
        assert "Not a directory" in bad["file.jpg/inner.jpg"]
        assert "File name too long" in bad["x" * 300 + ".jpg"]


def test_any_decoder_exception_makes_the_image_unusable(tmp_path, monkeypatch):
    """PIL's decoders raise more than OSError (NotImplementedError for some TIFF compressions,
    ValueError, SyntaxError): each is one unusable image, never the run."""
    import coco4.data.images as images

    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")

    def fails(*args, **kwargs):
        raise NotImplementedError("unsupported compression")

    monkeypatch.setattr(images.Image, "open", fails)
    with pytest.raises(UnreadableImage, match="unsupported compression"):
        read_rgb(tmp_path / "a.jpg")
    assert images.probe(tmp_path / "a.jpg") == (None, "unreadable: unsupported compression")


def test_16_bit_and_float_grayscale_keep_their_brightness(tmp_path):
    """Worked by hand: a 16-bit value v is v / 257 in 8 bits (65535 -> 255), a float in [0, 1]
    is v * 255. PIL's own convert("RGB") saturates the first (mean 254 where 127 is right)
    and blackens the second."""
    ramp = np.arange(64 * 64).reshape(64, 64)
    Image.fromarray((ramp * 16).astype(np.uint16)).save(tmp_path / "deep.png")
    got = np.asarray(read_rgb(tmp_path / "deep.png"), dtype=np.float64)
    assert got.shape == (64, 64, 3)
    assert np.abs(got[..., 0] - np.round(ramp * 16 / 257)).max() <= 1
    floats = (ramp / ramp.max()).astype(np.float32)
    Image.fromarray(floats).save(tmp_path / "float.tiff")
    got = np.asarray(read_rgb(tmp_path / "float.tiff"), dtype=np.float64)
    assert np.abs(got[..., 1] - np.round(floats * 255)).max() <= 1
    assert got.mean() == pytest.approx(127.5, abs=0.5)


@pytest.mark.parametrize("values, fragment", [
    (np.full((8, 8), -3.0, np.float32), "float pixels from -3 to -3, neither in [0, 1] nor"),
    (np.full((8, 8), np.nan, np.float32), "F pixels that are not finite numbers"),
    (np.full((8, 8), 2**20, np.int32), "I pixels from 1.04858e+06 to 1.04858e+06, beyond 16"),
], ids=["negative-float", "nan", "32-bit"])
def test_pixels_with_no_range_to_trust_are_unusable_with_the_reason(tmp_path, values, fragment):
    Image.fromarray(values).save(tmp_path / "odd.tiff")
    with pytest.raises(UnreadableImage, match=re.escape(fragment)):
        read_rgb(tmp_path / "odd.tiff")


def test_a_16_bit_scan_decodes_without_float64_copies_of_itself(tmp_path):
    """#35: one 16-bit PNG of 12000 x 12000 peaked at 4.6 GB (the 16-bit path went through
    float64 arrays of the whole image, 8 bytes a pixel each); now in bands, with the same
    pixels as the whole array scaled at once. numpy's allocations are what tracemalloc sees."""
    import tracemalloc

    side = 3000
    ramp = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16)
    Image.fromarray(ramp.reshape(side, side)).save(tmp_path / "scan.png")  # mode I;16
    tracemalloc.start()
    try:
        image = read_rgb(tmp_path / "scan.png")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * side * side  # the uint16 pixels and their bytes; float64 copies were 16+
    expected = np.clip(np.round(ramp.astype(np.float64) * (255 / 65535)), 0, 255)
    assert np.array_equal(np.asarray(image)[..., 0].ravel(), expected.astype(np.uint8))
