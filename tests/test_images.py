"""Image folders and CSVs: loading, checks, presizing, augmentation, workers, recipe keys."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fasttricks.callbacks import get_callback
from fasttricks.data.images import (
    AUGMENT_DEFAULTS,
    LeanItems,
    PresizeImage,
    batch_aug_transforms,
    check_image_splits,
    decode_image,
    jpeg_header,
    keep_freed_memory,
    normalization_stats,
    open_image,
    projective_grid,
    resize_crop,
    resolve_num_workers,
)
from fasttricks.datasets import load_dataset
from fasttricks.loaders import splits_dataloaders
from fasttricks.recipes import build_dataloaders, build_learner, load_recipe
from fasttricks.recipes._run import fit_learner, evaluate


def _img(path, value, mode="RGB", size=(20, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode)
    im.save(path)
    return path


def _folder(root, per_class=6, test_unlabelled=True):
    for split in ("train", "valid"):
        for cls, value in (("dark", 30), ("bright", 220)):
            for i in range(per_class):
                ext = (".jpg", ".png")[i % 2]
                mode = ("RGB", "L", "RGBA")[i % 3] if ext == ".png" else ("RGB", "L")[i % 2]
                _img(root / split / cls / f"{i}{ext}", value + i, mode)
    if test_unlabelled:
        for i in range(3):
            _img(root / "test" / f"t{i}.jpg", 30 if i else 220)
    return root


def _csv_data(root, multilabel=False, is_valid=True):
    rows = []
    for i in range(16):
        value = 30 if i % 2 else 220
        _img(root / "images" / f"im{i}.png", value, ("RGB", "L", "RGBA", "RGB")[i % 4])
        label = ("dark" if i % 2 else "bright")
        if multilabel:
            label = label + (" big" if i % 4 < 2 else "")
        rows.append({"image_id": f"im{i}", "tags": label, "is_valid": i >= 12})
    df = pd.DataFrame(rows)
    if not is_valid:
        df = df.drop(columns="is_valid")
    df.to_csv(root / "train.csv", index=False)
    return root / "train.csv"


# ---------------------------------------------------------------------------------- loading


def test_image_folder_finds_classes_modes_and_an_unlabelled_test_folder(tmp_path):
    _folder(tmp_path)
    s = load_dataset("image_folder", path=tmp_path, size=16)
    assert s.vocab == ["bright", "dark"] and len(s.train) == 12 and len(s.valid) == 12
    assert s.test is s.valid  # no labelled test folder: valid doubles as test
    assert sorted(p.name for p in s.unlabelled) == ["t0.jpg", "t1.jpg", "t2.jpg"]
    # grayscale and RGBA files come back as 3-channel RGB with their pixel values
    gray = next(p for p in s.train.x if p.suffix == ".png" and Image.open(p).mode == "L")
    rgba = next(p for p in s.train.x if Image.open(p).mode == "RGBA")
    for p in (gray, rgba):
        arr = np.asarray(open_image(p))
        assert arr.shape == (20, 20, 3)
        assert np.array_equal(arr, np.asarray(Image.open(p).convert("RGB")))


def test_image_folder_refuses_an_empty_class_folder_by_name(tmp_path):
    _folder(tmp_path, test_unlabelled=False)
    (tmp_path / "train" / "empty_cls").mkdir()
    with pytest.raises(ValueError, match="empty_cls.*no images"):
        load_dataset("image_folder", path=tmp_path)


def test_a_tiny_image_folder_names_the_folder_and_counts_instead_of_an_index_error(tmp_path):
    for i in range(5):  # five classes of one image: 20% of each class rounds to none
        _img(tmp_path / "train" / f"c{i}" / "0.png", 40 * i)
    recipe = {"name": "tiny", "data": {"name": "image_folder", "path": str(tmp_path), "size": 8,
                                       "num_workers": 0}, "model": {"name": "timm:resnet10t"}}
    with pytest.raises(ValueError) as err:
        build_dataloaders(recipe)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message
    assert "5 image(s) in 5 class(es)" in message
    assert "leaves 5 training and 0 validation image(s)" in message and "at least one" in message
    (tmp_path / "valid").mkdir()  # an empty valid folder is named too
    with pytest.raises(ValueError, match=r"validation folder .*valid' has no class folders"):
        build_dataloaders(recipe)
    for i in range(5):
        _img(tmp_path / "valid" / f"c{i}" / "0.png", 40 * i)
    s = load_dataset("image_folder", path=tmp_path, size=8).resplit([0, 1, 2], [])
    with pytest.raises(ValueError, match=r"image_folder: the valid split\(s\) are empty "
                                         r"\(train 3, valid 0, test 5 images\)"):
        splits_dataloaders(s, device="cpu", num_workers=0)  # any empty split, named


def test_image_csv_single_label_with_is_valid_column_and_test_folder(tmp_path):
    csv = _csv_data(tmp_path)
    for i in range(2):
        _img(tmp_path / "test_images" / f"x{i}.png", 100)
    s = load_dataset("image_csv", path=csv, folder="images", label_col="tags", suffix=".png",
                     test_folder="test_images", size=16)
    assert s.kind == "image" and not s.multilabel and s.vocab == ["bright", "dark"]
    assert [p.name for p in s.valid.x] == [f"im{i}.png" for i in range(12, 16)]
    assert s.info["path_col"] == "image_id"  # auto-detected
    np.testing.assert_array_equal(s.train.y, [0, 1] * 6)
    assert [p.name for p in s.unlabelled] == ["x0.png", "x1.png"]


def test_image_csv_multilabel_with_delimiter_gives_multi_hot_targets(tmp_path):
    csv = _csv_data(tmp_path, multilabel=True, is_valid=False)
    s = load_dataset("image_csv", path=csv, folder="images", label_col="tags", suffix=".png",
                     label_delim=" ", valid_pct=0.25)
    assert s.multilabel and s.vocab == ["big", "bright", "dark"]
    pool = s.pool()
    for p, y in zip(pool.x, pool.y):
        i = int(p.stem[2:])
        expected = [float(i % 4 < 2), float(i % 2 == 0), float(i % 2 == 1)]
        assert y.tolist() == expected
    assert len(s.valid) == 4 and len(s.train) == 12


def test_image_csv_fold_column_and_labelled_test_csv(tmp_path):
    csv = _csv_data(tmp_path, is_valid=False)
    df = pd.read_csv(csv)
    df["fold"] = np.arange(16) % 4
    df.to_csv(csv, index=False)
    df.iloc[:4].drop(columns="fold").to_csv(tmp_path / "test.csv", index=False)
    s = load_dataset("image_csv", path=csv, folder="images", label_col="tags", suffix=".png",
                     fold_col="fold", valid_fold=1, test_csv="test.csv")
    assert sorted(int(p.stem[2:]) for p in s.valid.x) == [1, 5, 9, 13]
    assert len(s.test) == 4 and s.test.y.tolist() == [0, 1, 0, 1] and s.unlabelled is None


def test_image_csv_errors_name_the_file_and_the_column(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_dataset("image_csv", path=tmp_path / "nope.csv")
    csv = _csv_data(tmp_path)
    with pytest.raises(KeyError, match=r"train.csv.*label column 'label'.*'tags'"):
        load_dataset("image_csv", path=csv, folder="images", suffix=".png")
    with pytest.raises(KeyError, match="path column 'fn'"):
        load_dataset("image_csv", path=csv, folder="images", path_col="fn", label_col="tags")
    df = pd.read_csv(csv)
    df.loc[3, "tags"] = np.nan
    df.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(ValueError, match=r"nan.csv.*'tags'.*NaN.*1 row.*\[5\]"):
        load_dataset("image_csv", path=tmp_path / "nan.csv", folder="images", label_col="tags",
                     suffix=".png")
    with pytest.raises(FileNotFoundError, match=r"16 of 16 image\(s\).*im0.jpg"):
        load_dataset("image_csv", path=csv, folder="images", label_col="tags", suffix=".jpg")


def test_a_corrupt_image_is_named_before_training_or_skipped_with_a_count(tmp_path, caplog):
    _folder(tmp_path, test_unlabelled=False)
    bad = tmp_path / "train" / "dark" / "broken.jpg"
    good = (tmp_path / "train" / "dark" / "0.jpg").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated JPEG
    s = load_dataset("image_folder", path=tmp_path, size=16)
    with pytest.raises(ValueError, match=r"1 unreadable image.*broken.jpg"):
        check_image_splits(s)
    assert check_image_splits(s, check=False) is s
    with caplog.at_level("WARNING"):
        kept = check_image_splits(s, check=False, bad_images="skip")
    assert len(kept.train) == len(s.train) - 1 and "skipping 1 unreadable" in caplog.text
    assert kept.info["skipped_images"] == [str(bad)]
    recipe = {"name": "bad", "data": {"name": "image_folder", "path": str(tmp_path), "size": 16,
                                      "num_workers": 0},
              "model": {"name": "timm:resnet10t"}}
    with pytest.raises(ValueError, match="broken.jpg"):
        build_dataloaders(recipe)
    dls = build_dataloaders(load_recipe(recipe, {"data.bad_images": "skip"}))
    assert len(dls.splits.train) == len(s.train) - 1


# ---------------------------------------------------------------------------------- transforms


def test_presize_crops_the_centre_square_for_valid_and_a_random_one_for_train(tmp_path):
    arr = np.zeros((40, 80, 3), dtype=np.uint8)
    arr[:, :40] = 255  # left half white, right half black
    Image.fromarray(arr).save(tmp_path / "wide.png")
    tfm = PresizeImage(20)
    centre = tfm(tmp_path / "wide.png", split_idx=1)
    assert centre.shape == (3, 20, 20) and centre.dtype == torch.uint8
    # the centre square spans columns 20..60: left half white, right half black
    ref = np.asarray(Image.fromarray(arr).resize((20, 20), Image.BILINEAR, box=(20, 0, 60, 40)))
    np.testing.assert_array_equal(centre.permute(1, 2, 0).numpy(), ref)
    means = {float(tfm(tmp_path / "wide.png", split_idx=0).float().mean()) for _ in range(30)}
    assert len(means) > 3  # random crops differ


def test_jpeg_draft_decoding_matches_a_full_decode_closely(tmp_path):
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize((400, 400), Image.BILINEAR).save(tmp_path / "a.jpg",
                                                                    quality=95)
    fast = PresizeImage(100)(tmp_path / "a.jpg", split_idx=1).permute(1, 2, 0).numpy()
    full = np.asarray(Image.open(tmp_path / "a.jpg").convert("RGB").resize((100, 100),
                                                                          Image.BILINEAR))
    assert np.abs(fast.astype(float) - full).mean() < 3.0


def test_decoding_gives_pil_pixels_for_every_jpeg_kind_and_png_mode(tmp_path):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize(
        (300, 200), Image.BICUBIC)
    files = {"rgb.jpg": (base, {}), "gray.jpg": (base.convert("L"), {}),
             "cmyk.jpg": (base.convert("CMYK"), {}),
             "progressive.jpg": (base, {"progressive": True}),
             "rgba.png": (base.convert("RGBA"), {}), "palette.png": (base.convert("P"), {}),
             "big.jpg": (base.resize((1200, 800)), {})}
    for name, (im, options) in files.items():
        path = tmp_path / name
        im.save(path, **options)
        head = jpeg_header(path.read_bytes())
        if name.endswith(".jpg"):
            assert head == (*Image.open(path).size, len(Image.open(path).getbands()))
        else:
            assert head is None
        for size in (150, 60):  # torchvision's decoder (or PIL), then PIL's draft mode
            x, full = decode_image(path, size)
            assert full == Image.open(path).size and x.dtype == torch.uint8
            ref = np.asarray(open_image(path, size))
            np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), ref)
    big, _ = decode_image(tmp_path / "big.jpg", 60)
    assert tuple(big.shape) == (3, 100, 150)  # 1/8 scale still has a shorter side >= 60
    assert jpeg_header(b"\xff\xd8\xff\xc3" + bytes(20)) is None  # lossless: left to PIL


def test_uint8_resize_crop_is_within_a_few_grey_levels_of_pil(tmp_path):
    rng = np.random.default_rng(1)
    arr = np.asarray(Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize(
        (256, 192), Image.BICUBIC))
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1)
    for box, size in (((0, 0, 192, 192), 160), ((30, 10, 200, 180), 100), ((64, 0, 256, 192), 300)):
        ref = np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR, box=box))
        out = resize_crop(x, box, size).permute(1, 2, 0).numpy().astype(int)
        assert out.shape == ref.shape
        diff = np.abs(out - ref)  # fixed-point rounding at sharp edges: a few levels, rarely
        assert diff.max() <= 6 and diff.mean() < 0.1 and (diff > 1).mean() < 0.02
    half = x[:, ::2, ::2]  # a draft-scale image: the box is in full-size pixels
    np.testing.assert_array_equal(resize_crop(half, (0, 0, 192, 192), 96, full=(256, 192)),
                                  resize_crop(half, (0, 0, 96, 96), 96))


def test_projective_grid_is_affine_grid_for_affine_matrices_and_divides_otherwise():
    theta = torch.randn(4, 2, 3)
    h = torch.cat([theta, torch.tensor([0.0, 0.0, 1.0]).expand(4, 1, 3)], dim=1)
    for align in (True, False):
        ref = torch.nn.functional.affine_grid(theta, (4, 3, 7, 9), align_corners=align)
        torch.testing.assert_close(projective_grid(h, (7, 9), align), ref)
    p = h.clone()
    p[:, 2, 0] = 0.3
    grid = projective_grid(p, (5, 6), True)
    u, v = torch.linspace(-1, 1, 6)[2], torch.linspace(-1, 1, 5)[3]
    point = p[1] @ torch.tensor([u, v, 1.0])
    torch.testing.assert_close(grid[1, 3, 2], point[:2] / point[2])
    p[0, 2] = torch.tensor([1.0, 0.0, 0.0])  # the column u = 0 maps to infinity
    assert projective_grid(p, (5, 5), True) is None


@pytest.mark.parametrize("options", [{}, {"flip_vert": True}, {"min_scale": 0.75},
                                     {"min_scale": 0.75, "max_rotate": 0.0, "max_warp": 0.0,
                                      "max_zoom": 1.0}, {"min_scale": 0.05},
                                     {"max_rotate": 45.0, "max_zoom": 2.0, "max_warp": 0.4,
                                      "max_lighting": 0.5, "pad_mode": "zeros"}])
def test_fused_batch_augmentation_matches_fastais_aug_transforms(options):
    from fastai.torch_core import TensorImage
    from fastai.vision.augment import aug_transforms

    kwargs = {**AUGMENT_DEFAULTS, **options}
    x = TensorImage(torch.rand(12, 3, 40, 40))
    for split_idx in (0, 1):
        outs = []
        for tfms in (aug_transforms(size=24, **kwargs), batch_aug_transforms(24, **kwargs)):
            torch.manual_seed(3)
            random.seed(3)
            y = x
            for tfm in tfms:
                y = tfm(y, split_idx=split_idx)
            outs.append(y)
        ref, fused = outs
        assert type(fused) is TensorImage and fused.shape == ref.shape == (12, 3, 24, 24)
        torch.testing.assert_close(fused, ref, atol=2e-4, rtol=0)
        assert split_idx == 0 or not torch.equal(ref, x[..., :24, :24])
    names = [type(t).__name__ for t in batch_aug_transforms(24, **kwargs)]
    assert names == ["FusedAffineCoordTfm", "FusedLightingTfm"] + (
        ["FusedRandomResizedCropGPU"] if kwargs["min_scale"] < 1 else [])


def test_fused_random_resized_crop_matches_fastais_with_its_area_pre_shrink():
    from fastai.torch_core import TensorImage
    from fastai.vision.augment import RandomResizedCropGPU

    from fasttricks.data.images import FusedRandomResizedCropGPU

    x = TensorImage(torch.rand(6, 3, 100, 90))
    ref_tfm = RandomResizedCropGPU(20, min_scale=0.8, ratio=(1, 1))
    fused = FusedRandomResizedCropGPU.from_tfm(ref_tfm)
    for split_idx in (0, 1):
        random.seed(5)
        ref = ref_tfm(x, split_idx=split_idx)
        random.seed(5)
        out = fused(x, split_idx=split_idx)
        assert min(fused.cp_size) / 20 / 2 > 1  # the crop is over twice the output: area first
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_normalization_comes_from_the_timm_config_else_imagenet():
    import timm

    vit = timm.get_pretrained_cfg("vit_tiny_patch16_224")
    assert normalization_stats("auto", "timm:vit_tiny_patch16_224") == (tuple(vit.mean),
                                                                        tuple(vit.std))
    assert normalization_stats("auto", "timm:vit_tiny_patch16_224")[0] == (0.5, 0.5, 0.5)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert normalization_stats("auto", "cnn2d") == imagenet
    assert normalization_stats("none") is None
    assert normalization_stats({"mean": [0.1], "std": [2]}) == ((0.1,), (2.0,))


def test_num_workers_auto_is_the_usable_cores_and_zero_in_a_daemon(monkeypatch):
    import multiprocessing
    import os

    assert resolve_num_workers("auto") == min(len(os.sched_getaffinity(0)), 16)
    assert resolve_num_workers(3) == 3
    with pytest.raises(ValueError, match="'many'"):
        resolve_num_workers("many")
    monkeypatch.setattr(multiprocessing.current_process(), "daemon", True, raising=False)
    assert resolve_num_workers("auto") == 0


def test_dataloaders_presize_augment_normalize_and_run_augmentation_in_workers(tmp_path):
    _folder(tmp_path)
    s = load_dataset("image_folder", path=tmp_path, size=16)
    dls = splits_dataloaders(s, bs=4, device="cpu", presize=24, augment=True, num_workers=2)
    assert dls.image_options["presize"] == 24 and dls.image_options["num_workers"] == 2
    assert dls.train.fake_l.num_workers == 2 and not dls.train.pin_memory
    xb, yb = next(iter(dls.train))  # augmentation ran in the workers
    assert xb.shape == (4, 3, 16, 16) and xb.dtype == torch.float32
    xv, yv = dls.valid.one_batch()
    assert xv.shape == (8, 3, 16, 16)
    # valid: centre crop of the presized image, no augmentation, ImageNet-normalized
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    raw = xv * std + mean
    assert raw.min() > -1e-3 and raw.max() < 1 + 1e-3
    first = s.valid.x[0]
    expected = np.asarray(open_image(first).convert("L"), dtype=np.float32).mean() / 255
    assert abs(float(raw[0].mean()) - expected) < 0.02
    assert dls.unlabelled is not None and dls.unlabelled.one_batch()[0].shape[1:] == (3, 16, 16)
    with pytest.raises(ValueError, match="presize"):
        splits_dataloaders(s, device="cpu", presize=8, num_workers=0)


def test_lean_items_are_fastais_items_for_train_valid_test_and_multilabel(tmp_path):
    from fastai.data.core import TfmdDL

    _folder(tmp_path)
    csv = _csv_data(tmp_path / "csv", multilabel=True)
    single = load_dataset("image_folder", path=tmp_path, size=16)
    multi = load_dataset("image_csv", path=csv, folder="images", label_col="tags",
                         suffix=".png", label_delim=" ", size=16)
    for s in (single, multi):
        dls = splits_dataloaders(s, bs=4, device="cpu", presize=24, augment=True, num_workers=0)
        loaders = [dls.train, dls.valid, dls[2]] + ([dls.unlabelled] if dls.unlabelled else [])
        loaders.append(dls.test_dl([str(p) for p in s.test.x]))
        for dl in loaders:
            assert dl._lean_items() is not None
            for i in range(len(dl.dataset)):
                random.seed(i)
                lean = dl.do_item(i)
                random.seed(i)
                ref = TfmdDL.do_item(dl, i)
                assert [type(o) for o in lean] == [type(o) for o in ref]
                for a, b in zip(lean, ref):
                    assert torch.equal(a, b)
    with dls.train.dataset.set_split_idx(1):  # TTA-style switches reach the lean path
        random.seed(0)
        a = dls.train.do_item(0)
        random.seed(0)
        assert torch.equal(a[0], TfmdDL.do_item(dls.train, 0)[0])


def test_workers_augment_training_batches_only_and_match_the_main_process(tmp_path):
    _folder(tmp_path)
    s = load_dataset("image_folder", path=tmp_path, size=16)
    dls = splits_dataloaders(s, bs=4, device="cpu", presize=24, augment=True, num_workers=2)
    first, second = (torch.cat([xb for xb, _ in dls.valid]) for _ in range(2))
    assert torch.equal(first, second)  # no random augmentation on validation
    dls.valid.fake_l.num_workers = 0
    torch.testing.assert_close(first, torch.cat([xb for xb, _ in dls.valid]))
    a, b = (torch.cat([xb for xb, _ in dls.train]) for _ in range(2))
    assert a.shape == b.shape and not torch.equal(a, b)  # training batches are augmented


def test_keep_freed_memory_stops_the_kernel_refaulting_each_batch():
    code = (
        "import resource, torch\n"
        "from fasttricks.data.images import keep_freed_memory\n"
        "def faults():\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    for _ in range(8):\n"
        "        a = torch.ones(6_000_000); b = torch.ones(9_000_000); del a; c = b * 2; del b, c\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
        "plain = faults()\n"
        "kept = keep_freed_memory()\n"
        "faults()\n"
        "print(kept, plain, faults())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    kept, plain, after = out.stdout.split()
    if kept != "True":
        pytest.skip("not glibc")
    # refaulting each batch costs about plain / 8 faults per loop; kept memory must cost less
    # than one loop's worth over all eight (what is left is the interpreter's own allocations)
    assert int(plain) > 10_000 and int(after) < int(plain) / 8


# ---------------------------------------------------------------------------------- recipes


def test_image_recipe_keys_are_validated_with_their_dotted_path(tmp_path):
    _folder(tmp_path, test_unlabelled=False)
    base = {"name": "img", "data": {"name": "image_folder", "path": str(tmp_path), "size": 16},
            "model": {"name": "timm:resnet10t"}}
    r = load_recipe(base)
    assert r["data"]["augment"] is False and r["data"]["num_workers"] == "auto"
    assert r["data"]["normalize"] == "auto" and r["data"]["check_images"] == "auto"
    r = load_recipe(base, {"data.augment": True, "data.presize": 20})
    assert dict(r["data"]["augment"]) == AUGMENT_DEFAULTS
    r = load_recipe(base, {"data.augment": {"max_rotate": "30", "flip_vert": True}})
    assert r["data"]["augment"]["max_rotate"] == 30.0 and r["data"]["augment"]["flip_vert"]
    bad = [
        ({"data.augment": {"max_rotat": 3}}, KeyError, "data.augment.max_rotat.*max_rotate"),
        ({"data.augment": {"p_affine": 1.5}}, ValueError, "data.augment.p_affine"),
        ({"data.augment": {"min_zoom": 2.0}}, ValueError, "min_zoom"),
        ({"data.augment": {"pad_mode": "wrap"}}, KeyError, "data.augment.pad_mode"),
        ({"data.augment": "yes"}, TypeError, "data.augment"),
        ({"data.presize": 8}, ValueError, "data.presize.*at least data.size"),
        ({"data.num_workers": -1}, ValueError, "data.num_workers"),
        ({"data.num_workers": "many"}, TypeError, "data.num_workers"),
        ({"data.pin_memory": "sometimes"}, TypeError, "data.pin_memory"),
        ({"data.normalize": "imagenett"}, KeyError, "data.normalize.*imagenet"),
        ({"data.normalize": {"mean": [0.5]}}, ValueError, "data.normalize"),
        ({"data.check_images": "maybe"}, TypeError, "data.check_images"),
        ({"data.bad_images": "ignore"}, KeyError, "data.bad_images.*skip"),
    ]
    for override, error, match in bad:
        with pytest.raises(error, match=match):
            load_recipe(base, override)
    with pytest.raises(ValueError, match="data.augment.*image datasets.*image_csv.*'digits'"):
        load_recipe({"data": {"name": "digits", "augment": True}, "model": "cnn2d"})
    assert load_recipe({"data": {"name": "digits", "num_workers": 1},
                        "model": "cnn2d"})["data"]["num_workers"] == 1


def test_image_folder_recipe_with_augmentation_and_mixup_trains_one_epoch(tmp_path):
    _folder(tmp_path, per_class=8)
    recipe = load_recipe({
        "name": "img", "data": {"name": "image_folder", "path": str(tmp_path), "size": 16,
                                "bs": 4, "presize": 20, "num_workers": 0,
                                "augment": {"max_rotate": 20, "max_lighting": 0.1}},
        "model": {"name": "timm:resnet10t"}, "optimizer": {"name": "adamw", "lr": 1e-3},
        "schedule": {"epochs": 1}, "callbacks": [{"name": "mixup", "alpha": 0.4}],
        "fp16": False, "channels_last": False})
    learn = build_learner(recipe)
    assert any(type(cb).__name__ == "MixUp" for cb in learn.cbs)
    fit_learner(learn)
    loss = evaluate(learn, ds_idx=1)["loss"]
    assert np.isfinite(loss)
    preds, _ = learn.get_preds(dl=learn.dls.unlabelled)
    assert preds.shape == (3, 2) and torch.allclose(preds.sum(1), torch.ones(3), atol=1e-5)


def test_multilabel_image_csv_recipe_defaults_to_bce_and_trains_with_cutmix(tmp_path):
    csv = _csv_data(tmp_path, multilabel=True)
    recipe = load_recipe({
        "name": "ml", "data": {"name": "image_csv", "path": str(csv), "folder": "images",
                               "label_col": "tags", "suffix": ".png", "label_delim": " ",
                               "size": 16, "bs": 4, "num_workers": 0, "augment": True,
                               "normalize": "imagenet"},
        "model": {"name": "timm:resnet10t"}, "schedule": {"epochs": 1},
        "callbacks": ["cutmix"], "fp16": False, "channels_last": False})
    assert recipe["loss"]["name"] == "bce" and recipe["metrics"] == ["accuracy_multi"]
    learn = build_learner(recipe)
    fit_learner(learn)
    res = evaluate(learn, ds_idx=1)
    assert np.isfinite(res["loss"]) and 0.0 <= res["accuracy_multi"] <= 1.0
    xb, yb = learn.dls.valid.one_batch()
    assert yb.shape == (4, 3)  # the four is_valid rows, three labels


def test_mixup_and_cutmix_are_registered_with_their_options():
    from fastai.callback.mixup import CutMix, MixUp

    assert isinstance(get_callback("mixup", alpha=0.2), MixUp)
    assert isinstance(get_callback("cutmix"), CutMix)
    with pytest.raises(TypeError, match="alpha"):
        get_callback("mixup", beta=0.2)
    r = load_recipe({"data": "digits", "model": "cnn2d",
                     "callbacks": [{"name": "mixup", "alpha": "0.3"}]})
    assert r["callbacks"][0] == {"name": "mixup", "alpha": 0.3}
    with pytest.raises(KeyError, match="callbacks.cutmix.alhpa.*alpha"):
        load_recipe({"data": "digits", "model": "cnn2d",
                     "callbacks": [{"name": "cutmix", "alhpa": 1.0}]})
