"""Image and SDF signals: folder layouts, transforms, clear errors, bundled data, analytic SDFs."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from pruninglab.data.images import (
    BUNDLED_PHOTOS,
    ImageFileSignals,
    TensorSignals,
    celeba_split,
    folder_split,
    image_folder_split,
    imagenette_split,
    lfw_faces,
    list_images,
    load_image,
    photo_crops,
)
from pruninglab.data.sdf import (
    box_sdf,
    circle_sdf,
    encode_sdf,
    load_sdf_npz,
    polygon_sdf,
    sdf_images,
    sdf_split,
    write_sdf_npz,
)
from pruninglab.inr.siren import coordinate_grid


def _pattern(h, w, seed=0):
    """An RGB image whose pixel (i, j) encodes its own row and column (exact in PNG)."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.arange(h)[:, None] % 256
    arr[..., 1] = np.arange(w)[None, :] % 256
    arr[..., 2] = rng.integers(0, 256, (h, w))
    return arr


def _save(path, arr, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


# --------------------------------------------------------------------------- single images


def test_load_image_centre_crop_and_errors(tmp_path):
    arr = _pattern(218, 178)
    png = _save(tmp_path / "a.png", arr)
    img = load_image(png, 178)  # CelebA: crop 178x218 -> 178x178, no resize
    assert img.shape == (178, 178, 3) and img.dtype == torch.float32
    expected = torch.from_numpy(arr[20:198]).float() / 255  # (218 - 178) / 2 = 20 rows off the top
    assert torch.equal(img, expected)
    grey = load_image(png, 100, resize=100, channels=1)
    assert grey.shape == (100, 100, 1) and 0 <= float(grey.min()) and float(grey.max()) <= 1

    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image(tmp_path / "missing.png", 10)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match="bad.jpg"):
        load_image(bad, 10)
    jpg = _save(tmp_path / "cut.jpg", _pattern(64, 64), "JPEG")
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])  # truncated download
    with pytest.raises(ValueError, match="cut.jpg"):
        load_image(jpg, 32)
    with pytest.raises(ValueError, match="smaller than"):
        load_image(png, 300)
    with pytest.raises(ValueError, match="channels"):
        load_image(png, 10, channels=2)
    with pytest.raises(ValueError, match="resolution"):
        load_image(png, 0)


def test_list_images_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="contains no image files"):
        list_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="not a directory"):
        list_images(tmp_path / "empty" / "notes.txt")


# --------------------------------------------------------------------------- folder layouts


def _celeba(root, n=6):
    imgs = root / "img_align_celeba"
    lines = []
    for i in range(1, n + 1):
        name = f"{i:06d}.png"
        _save(imgs / name, _pattern(218, 178, seed=i))
        lines.append(f"{name} {0 if i <= n - 2 else (1 if i == n - 1 else 2)}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def test_celeba_layout(tmp_path):
    _celeba(tmp_path)
    split = celeba_split(tmp_path)
    assert (len(split.train), len(split.test)) == (4, 1)
    assert split.test.paths[0].name == "000006.png"
    sig, target = split.train[0]
    assert sig.shape == (178 * 178, 3) and sig is target
    assert torch.equal(sig.reshape(178, 178, 3), load_image(tmp_path / "img_align_celeba" / "000001.png", 178))
    assert len(celeba_split(tmp_path, test_split="val").test) == 1
    # Recognised by the generic entry point, also in torchvision's layout <root>/celeba/...
    nested = tmp_path / "tv"
    _celeba(nested / "celeba", 4)
    assert image_folder_split(nested).name == "celeba"
    small = image_folder_split(tmp_path, 32)
    assert small.train[0][0].shape == (32 * 32, 3)
    # Errors: no partition file, a malformed line, a listed file that is missing.
    (tmp_path / "list_eval_partition.txt").write_text("000001.png 0\n000002.png seven\n")
    with pytest.raises(ValueError, match="line 2"):
        celeba_split(tmp_path)
    (tmp_path / "list_eval_partition.txt").write_text("000001.png 0\n999999.png 2\n")
    with pytest.raises(FileNotFoundError, match="999999.png"):
        celeba_split(tmp_path).test.stack()
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition"):
        celeba_split(tmp_path)


def test_imagenette_layout_order_and_resize(tmp_path):
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("n02", "n01"):
            for i in range(n):
                _save(tmp_path / split / cls / f"{cls}_{i}.png", _pattern(240, 320, seed=i))
    split = imagenette_split(tmp_path)
    assert (len(split.train), len(split.test)) == (6, 4)
    assert [p.parent.name for p in split.test.paths] == ["n01", "n01", "n02", "n02"]  # ImageFolder order
    img = split.test.image(0)
    assert img.shape == (178, 178, 3)
    # Resize shorter side 240 -> 200 (width 320 -> 267), then centre crop 178: the crop's middle
    # column/row sits at the middle of the resized picture; its red channel encodes the row.
    ref = Image.fromarray(_pattern(240, 320, seed=0)).resize((267, 200), Image.BILINEAR)
    assert abs(float(img[89, 89, 0]) * 255 - np.asarray(ref)[100, 133, 0]) <= 3
    assert image_folder_split(tmp_path).name == "imagenette"
    bare = tmp_path / "bare"
    (bare / "train").mkdir(parents=True)
    (bare / "val").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        imagenette_split(bare)
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        imagenette_split(tmp_path / "bare" / "train")


def test_any_folder_split_and_errors(tmp_path):
    for i in range(10):
        _save(tmp_path / "pics" / f"{i:02d}.png", _pattern(40, 50, seed=i))
    split = folder_split(tmp_path / "pics", 32)
    assert (len(split.train), len(split.test)) == (9, 1)
    assert split.test.paths[0].name == "09.png"
    assert split.test.stack().shape == (1, 32 * 32, 3)
    assert image_folder_split(tmp_path / "pics", 16).train.stack(2).shape == (2, 256, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder_split(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        image_folder_split(tmp_path / "empty")
    (tmp_path / "pics" / "05.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(ValueError, match="05.png"):
        folder_split(tmp_path / "pics", 32).train.stack()
    with pytest.raises(ValueError, match="paths"):
        ImageFileSignals([], 8)


# --------------------------------------------------------------------------- bundled data


def test_lfw_faces_and_photo_crops():
    faces = lfw_faces()
    assert (len(faces.train), len(faces.test), faces.height, faces.channels) == (80, 20, 25, 1)
    from skimage.data import lfw_subset

    raw = lfw_subset()
    assert np.allclose(faces.test.image(0)[..., 0].numpy(), raw[80])
    assert 0 <= float(faces.train.images.min()) and float(faces.train.images.max()) <= 1
    with pytest.raises(ValueError, match="100 faces"):
        lfw_faces(90, 20)

    photos = photo_crops(32, crops_per_photo=4)
    assert photos.train.images.shape == (4 * (len(BUNDLED_PHOTOS) - 2), 32, 32, 3)
    assert photos.test.images.shape == (8, 32, 32, 3) and photos.test.images.dtype == torch.uint8
    sig = photos.test[0][0]
    assert sig.shape == (32 * 32, 3) and 0 <= float(sig.min()) and float(sig.max()) <= 1
    # Split by photo: no test crop equals any training crop.
    tr = photos.train.images.reshape(len(photos.train), -1)
    te = photos.test.images.reshape(len(photos.test), -1)
    assert not any(bool((tr == row).all(1).any()) for row in te)
    with pytest.raises(ValueError, match="shorter_side"):
        photo_crops(64, shorter_side=32)


def test_tensor_signals_validation():
    with pytest.raises(ValueError, match="images"):
        TensorSignals(torch.zeros(2, 4, 4, 2))
    ts = TensorSignals(torch.full((3, 2, 2), 255, dtype=torch.uint8))
    assert float(ts[0][0].max()) == 1.0 and ts.channels == 1
    with pytest.raises(ValueError, match="count"):
        ts.stack(4)


# --------------------------------------------------------------------------- SDF


def test_analytic_sdfs_against_independent_formulas():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.3, 0.4], [2.0, 2.0]], dtype=torch.float64)
    assert torch.allclose(circle_sdf(pts, (0, 0), 0.5), torch.tensor([-0.5, 0.5, 0.0, 2 * math.sqrt(2) - 0.5],
                                                                    dtype=torch.float64))
    # A square as a box and as a polygon: two independent formulas, same field.
    grid = coordinate_grid(41).flip(-1).to(torch.float64) * 1.3
    square = [(-0.4, -0.2), (0.2, -0.2), (0.2, 0.4), (-0.4, 0.4)]
    assert torch.allclose(box_sdf(grid, (-0.1, 0.1), (0.3, 0.3)), polygon_sdf(grid, square), atol=1e-12)
    # Rotated box vs the polygon of its rotated corners.
    a = 0.7
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    corners = (rot @ np.array([[-0.3, -0.1], [0.3, -0.1], [0.3, 0.1], [-0.3, 0.1]]).T).T
    assert torch.allclose(box_sdf(grid, (0, 0), (0.3, 0.1), a), polygon_sdf(grid, corners), atol=1e-12)
    # A concave L-shape: the notch is outside, the arms inside; distances known by hand.
    ell = [(0, 0), (2, 0), (2, 1), (1, 1), (1, 2), (0, 2)]
    probe = torch.tensor([[1.5, 1.5], [0.5, 1.5], [1.5, 0.5], [0.5, 0.5]], dtype=torch.float64)
    assert torch.allclose(polygon_sdf(probe, ell), torch.tensor([0.5, -0.5, -0.5, -0.5], dtype=torch.float64))
    assert float(encode_sdf(torch.tensor(0.0))) == 0.5
    with pytest.raises(ValueError, match="vertices"):
        polygon_sdf(pts, [(0, 0), (1, 1)])


def test_sdf_generator_and_paper_file_format(tmp_path):
    imgs = sdf_images(6, 24, seed=1)
    assert imgs.shape == (6, 24, 24, 1) and 0 <= float(imgs.min()) and float(imgs.max()) <= 1
    assert torch.equal(imgs, sdf_images(6, 24, seed=1))
    assert all(float(im.min()) < 0.5 < float(im.max()) for im in imgs)  # every field has an inside and an outside
    split = sdf_split(5, 3, 24, seed=2)
    assert (len(split.train), len(split.test), split.channels) == (5, 3, 1)

    path = write_sdf_npz(tmp_path, imgs[:4].repeat(1, 1, 1, 3), imgs[4:].repeat(1, 1, 1, 3))
    assert path.name == "data_2d_sdf.npz"
    with np.load(path) as npz:  # the official code reads sdf['train_data.npy'], (N, H, W, C) uint8
        assert npz["train_data.npy"].dtype == np.uint8 and npz["train_data.npy"].shape == (4, 24, 24, 3)
    back = load_sdf_npz(tmp_path)
    assert (len(back.train), len(back.test), back.channels, back.height) == (4, 2, 3, 24)
    assert torch.allclose(back.train.image(0)[..., 0], imgs[0, ..., 0], atol=0.5 / 255 + 1e-6)
    assert load_sdf_npz(path).name == "sdf"

    with pytest.raises(FileNotFoundError, match="data_2d_sdf.npz"):
        load_sdf_npz(tmp_path / "elsewhere")
    np.savez(tmp_path / "wrong.npz", train=np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match="lacks"):
        load_sdf_npz(tmp_path / "wrong.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="junk.npz"):
        load_sdf_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "shape.npz", train_data=np.zeros((2, 4, 4, 2), np.uint8), test_data=np.zeros((1, 4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="train_data"):
        load_sdf_npz(tmp_path / "shape.npz")


# --------------------------------------------------------------------------- bit depth and value checks


def _png16_rgb(path, arr16):
    """A 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one): IHDR, one IDAT, IEND."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    h, w, _ = arr16.shape
    rows = b"".join(b"\x00" + arr16[i].astype(">u2").tobytes() for i in range(h))  # filter 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_16_bit_grey_png_is_read_at_its_real_depth(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472, most above 255
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    img = load_image(path, 32, channels=1)
    assert torch.allclose(img[..., 0], torch.from_numpy(ramp.astype(np.float32) / 65535.0), atol=1e-7)
    assert float(img.max()) < 1.0 and len(torch.unique(img)) == 1024  # not saturated, not quantised to 8 bits
    rgb = load_image(path, 16, resize=16, channels=3)
    assert rgb.shape == (16, 16, 3) and torch.equal(rgb[..., 0], rgb[..., 2])
    assert 0.4 < float(rgb.mean()) < 0.6


def test_16_bit_colour_png_is_scaled_not_saturated(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    img = load_image(_png16_rgb(tmp_path / "deep-rgb.png", arr), 8)
    assert torch.allclose(img, torch.from_numpy(arr.astype(np.float32) / 65535.0), atol=1 / 255)


def test_tensor_signals_signed_range():
    sig = TensorSignals(torch.linspace(-1, 1, 32).reshape(2, 4, 4, 1), value_range=(-1.0, 1.0))
    assert sig.value_range == (-1.0, 1.0) and float(sig.image(0).min()) == -1.0
    with pytest.raises(ValueError, match=r"images: values lie in \[-1, 1\]; expected \[0, 1\]"):
        TensorSignals(torch.linspace(-1, 1, 32).reshape(2, 4, 4, 1))
