"""Training data: prompt files, image folders, HF datasets, and the deterministic batch source.

Images are real photos shipped with scikit-image (no downloads), shrunk so the whole file runs in a few
seconds. Pixel comparisons use tolerances only where resampling is involved; determinism checks are
exact.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from distillkit.data import BatchSource, ImageTextDataset, item_seed, load_prompts, prepare_image
from distillkit.errors import DataError
from distillkit.recipe.schema import DataConfig

skdata = pytest.importorskip("skimage.data")

R = 32


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    """Five real photos of different shapes, shrunk to about 100 px."""
    out = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket", "camera"):
        im = Image.fromarray(getattr(skdata, name)())
        out[name] = im.resize((im.width // 4, im.height // 4), Image.Resampling.BICUBIC)
    return out  # camera is grayscale ("L"); chelsea/coffee/rocket are wide


def write_folder(folder, photos, captions: dict[str, str | None], fmt: dict[str, str] | None = None):
    """Save ``photos`` into ``folder`` with a metadata.jsonl; a None caption leaves the key out."""
    folder.mkdir(parents=True, exist_ok=True)
    fmt = fmt or {}
    lines = []
    for name, caption in captions.items():
        ext = fmt.get(name, "png")
        photos[name].save(folder / f"{name}.{ext}")
        entry = {"file_name": f"{name}.{ext}"}
        if caption is not None:
            entry["text"] = caption
        lines.append(json.dumps(entry))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def add_garbage(folder, name="broken.png", caption="a broken file"):
    (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    with open(folder / "metadata.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"file_name": name, "text": caption}) + "\n")


CAPTIONS = {"astronaut": "an astronaut", "chelsea": "a cat", "coffee": "a cup of coffee",
            "rocket": "a rocket on the pad", "camera": "a man with a camera"}


@pytest.fixture()
def folder(tmp_path, photos):
    return write_folder(tmp_path / "imgs", photos, CAPTIONS, fmt={"chelsea": "jpg", "coffee": "jpeg"})


def source(folder, seed=0, rank=0, world_size=1, **kw) -> BatchSource:
    cfg = DataConfig(images=str(folder), resolution=R, **{"batch_size": 2, **kw})
    return BatchSource.from_config(cfg, seed=seed, rank=rank, world_size=world_size)


# -- prompts -----------------------------------------------------------------------------------------

def test_prompt_file_skips_blank_lines_and_comments(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_bytes("\ufeff# my prompts\r\na cat\r\n\r\n   \n  a dog on a skateboard  \n#a comment\nüber café\n"
                  .encode("utf-8"))
    assert load_prompts(str(f)) == ["a cat", "a dog on a skateboard", "über café"]


def test_prompt_file_bad_utf8_names_file_and_line(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("a cat\n# comment\ncaf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt.*not valid UTF-8: line 3 .*0xe9"):
        load_prompts(f)


def test_prompt_file_with_no_prompts(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("# nothing yet\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="holds no prompts"):
        load_prompts(str(f))


def test_missing_prompt_file_suggests_inline_list(tmp_path):
    with pytest.raises(DataError, match=r"not found; for inline prompts write a list"):
        load_prompts("a cat in a hat")


def test_inline_prompts_reject_empty_entries_by_index():
    assert load_prompts(["a", "b"]) == ["a", "b"]
    with pytest.raises(DataError, match=r"data\.prompts\[1\] is an empty prompt"):
        load_prompts(["a cat", "  ", "a dog"])


# -- the item pipeline ---------------------------------------------------------------------------------

def test_items_have_shape_range_and_captions(folder):
    ds = ImageTextDataset.from_folder(folder, resolution=R)
    assert len(ds) == 5 and not ds.skipped
    seen = set()
    for i in range(len(ds)):
        item = ds[i]
        px = item["pixels"]
        assert px.shape == (3, R, R) and px.dtype == torch.float32
        assert px.min() >= -1 and px.max() <= 1 and px.std() > 0.05  # a photo, not a constant
        seen.add(item["prompt"])
    assert seen == set(CAPTIONS.values())


def test_grayscale_and_rgba_become_rgb(tmp_path, photos):
    gray = photos["camera"]
    rgba = photos["astronaut"].convert("RGBA")
    alpha = np.full((rgba.height, rgba.width), 255, np.uint8)
    alpha[:, : rgba.width // 2] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    out_gray = prepare_image(gray, R).pixels
    assert out_gray.shape == (3, R, R)
    assert torch.equal(out_gray[0], out_gray[1]) and torch.equal(out_gray[1], out_gray[2])
    out_rgba = prepare_image(rgba, R).pixels
    assert out_rgba.shape == (3, R, R)
    assert torch.all(out_rgba[:, :, : R // 2 - 1] == 1.0)  # transparent shows as white
    assert out_rgba[:, :, R // 2 + 1:].std() > 0.05


@pytest.mark.parametrize("wide", [True, False])
def test_resize_and_center_crop_keep_the_middle(photos, wide):
    """A photo flanked by solid red and blue bands: the centre crop is the photo, with no band."""
    core = photos["astronaut"].resize((96, 96), Image.Resampling.BICUBIC)
    size = (192, 96) if wide else (96, 192)
    canvas = Image.new("RGB", size, (255, 0, 0))
    blue = Image.new("RGB", (48, 96) if wide else (96, 48), (0, 0, 255))
    canvas.paste(blue, (144, 0) if wide else (0, 144))
    canvas.paste(core, (48, 0) if wide else (0, 48))
    out = prepare_image(canvas, R)
    reference = prepare_image(core, R).pixels
    assert out.original_size == (size[1], size[0])
    assert out.crop_top_left == ((0, 16) if wide else (16, 0))  # resized to 64x32 / 32x64
    assert (out.pixels - reference).abs().mean() < 0.03
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)
    assert ((out.pixels - red).abs().sum(0) < 0.1).sum() == 0


def test_random_crop_and_flip_are_a_function_of_seed_epoch_index(folder):
    def make(seed):
        return ImageTextDataset.from_folder(folder, resolution=R, center_crop=False, random_flip=True, seed=seed)

    a, b, c = make(0), make(0), make(1)
    for i in range(len(a)):
        assert torch.equal(a.get(i, epoch=3)["pixels"], b.get(i, epoch=3)["pixels"])
    wide = [i for i in range(len(a)) if a.get(i)["original_size"][1] > a.get(i)["original_size"][0]]
    crops = {a.get(wide[0], epoch=e)["crop_top_left"] for e in range(8)}
    assert len(crops) > 1  # crops vary across epochs
    assert any(not torch.equal(a.get(i, epoch=0)["pixels"], c.get(i, epoch=0)["pixels"]) for i in wide)
    assert item_seed(0, 1, 2) != item_seed(0, 2, 1)


def test_flip_mirrors_the_unflipped_crop(folder):
    plain = ImageTextDataset.from_folder(folder, resolution=R)
    flips = ImageTextDataset.from_folder(folder, resolution=R, random_flip=True)
    ref = plain.get(0)["pixels"]
    outcomes = set()
    for epoch in range(10):
        px = flips.get(0, epoch)["pixels"]
        assert torch.equal(px, ref) or torch.equal(px, ref.flip(-1))
        outcomes.add(torch.equal(px, ref))
    assert outcomes == {True, False}


# -- skipping and strict mode -------------------------------------------------------------------------------

def test_corrupt_image_is_skipped_and_counted(folder):
    add_garbage(folder)
    src = source(folder)
    assert len(src) == 5
    info = src.describe()
    assert info["skipped"] == {"unreadable image": 1} and info["skipped_total"] == 1
    assert "broken.png" in info["skipped_examples"][0]
    prompts = [p for s in range(10) for p in src.batch(s)["prompts"]]
    assert "a broken file" not in prompts


def test_corrupt_image_in_strict_mode_names_the_file(folder):
    add_garbage(folder)
    with pytest.raises(DataError, match=r"broken\.png: unreadable image"):
        source(folder, strict=True)


def test_truncated_jpeg_passes_the_header_check_and_is_skipped_at_load(folder, photos):
    """verify() does not decode JPEG data, so this one is only found when loaded: the item is replaced
    by the next usable one, counted once, and the batch stays a pure function of the step."""
    buf = io.BytesIO()
    photos["astronaut"].save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with open(folder / "metadata.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"file_name": "truncated.jpg", "text": "half an astronaut"}) + "\n")
    ds = ImageTextDataset.from_folder(folder, resolution=R)
    assert len(ds) == 6 and not ds.skipped
    bad = len(ds) - 1
    item = ds.get(bad)
    assert item["index"] == 0 and item["prompt"] == CAPTIONS["astronaut"]
    assert ds.skipped == {"unreadable image": 1}
    ds.get(bad)
    assert ds.skipped == {"unreadable image": 1}
    fresh = ImageTextDataset.from_folder(folder, resolution=R, strict=True)  # header check passes
    with pytest.raises(DataError, match=r"truncated\.jpg: unreadable image \(OSError: image file is truncated"):
        fresh.get(bad)


def test_missing_caption_and_missing_file_are_counted(tmp_path, photos):
    folder = write_folder(tmp_path / "imgs", photos, {**CAPTIONS, "rocket": None})
    with open(folder / "metadata.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"file_name": "not_there.png", "text": "ghost"}) + "\n")
        f.write("{not json\n")
    ds = ImageTextDataset.from_folder(folder, resolution=R)
    assert len(ds) == 4
    assert ds.skipped == {"missing caption": 1, "missing image file": 1, "malformed metadata line": 1}
    with pytest.raises(DataError, match=r"3 unusable item\(s\)[\s\S]*rocket\.png: missing caption"):
        ImageTextDataset.from_folder(folder, resolution=R, strict=True)


def test_txt_sidecar_captions(tmp_path, photos):
    folder = tmp_path / "sidecars"
    (folder / "sub").mkdir(parents=True)
    photos["astronaut"].save(folder / "a.png")
    (folder / "a.txt").write_text("an astronaut\n", encoding="utf-8")
    photos["chelsea"].save(folder / "sub" / "b.jpg")
    (folder / "sub" / "b.txt").write_text("a cat", encoding="utf-8")
    photos["coffee"].save(folder / "c.png")  # no caption file
    ds = ImageTextDataset.from_folder(folder, resolution=R)
    assert [ds[i]["prompt"] for i in range(len(ds))] == ["an astronaut", "a cat"]
    assert ds.skipped == {"missing caption": 1}
    assert "c.png" in ds.skipped_examples[0]


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no metadata.jsonl and no images"):
        ImageTextDataset.from_folder(tmp_path / "empty", resolution=R)


# -- the batch source ---------------------------------------------------------------------------------------

def test_batches_are_deterministic_and_vary_by_step(folder):
    a, b = source(folder, seed=7), source(folder, seed=7, center_crop=False, random_flip=True)
    b2 = source(folder, seed=7, center_crop=False, random_flip=True)
    first = a.batch(3)
    assert first["pixels"].shape == (2, 3, R, R) and len(first["prompts"]) == 2
    assert torch.equal(first["pixels"], a.batch(3)["pixels"]) and first["prompts"] == a.batch(3)["prompts"]
    assert torch.equal(b.batch(5)["pixels"], b2.batch(5)["pixels"])
    assert a.indices(0) != a.indices(1)
    assert not torch.equal(a.batch(0)["pixels"], a.batch(1)["pixels"])
    orders = {tuple(i for step in range(3) for _, i in source(folder, seed=sd).indices(step)) for sd in range(3)}
    assert len(orders) > 1  # the seed changes the order


def test_resume_gets_the_uninterrupted_batch(folder):
    run = source(folder, seed=3, center_crop=False, random_flip=True)
    history = [run.batch(s) for s in range(6)]
    resumed = source(folder, seed=3, center_crop=False, random_flip=True).batch(5)
    assert resumed["prompts"] == history[5]["prompts"]
    assert torch.equal(resumed["pixels"], history[5]["pixels"])


def test_each_epoch_is_a_permutation_and_batches_straddle_epochs(tmp_path):
    prompts = [f"prompt {i}" for i in range(10)]
    src = BatchSource(prompts=prompts, batch_size=4, seed=1)
    stream = [p for s in range(5) for p in src.batch(s)["prompts"]]  # 20 samples = 2 epochs
    assert sorted(stream[:10]) == sorted(prompts) and sorted(stream[10:]) == sorted(prompts)
    assert stream[:10] != stream[10:]
    assert src.batch(2)["pixels"] is None and src.epoch_of(2) == 0 and src.epoch_of(3) == 1


def test_ranks_partition_the_global_batch(folder):
    whole = source(folder, seed=5, batch_size=4)
    ranks = [source(folder, seed=5, batch_size=2, rank=r, world_size=2) for r in range(2)]
    for step in range(4):
        parts = [r.batch(step) for r in ranks]
        ref = whole.batch(step)
        assert parts[0]["prompts"] + parts[1]["prompts"] == ref["prompts"]
        assert torch.equal(torch.cat([p["pixels"] for p in parts]), ref["pixels"])
    prompt_ranks = [BatchSource(prompts=[str(i) for i in range(12)], batch_size=3, seed=0, rank=r, world_size=2)
                    for r in range(2)]
    epoch = [p for s in range(2) for r in prompt_ranks for p in r.batch(s)["prompts"]]
    assert sorted(epoch, key=int) == [str(i) for i in range(12)]


def test_data_free_config_and_relative_paths(tmp_path, folder):
    (tmp_path / "prompts.txt").write_text("# data-free\na cat\na dog\na fox\n", encoding="utf-8")
    src = BatchSource.from_config(DataConfig(prompts="prompts.txt", batch_size=2), seed=0, base_dir=tmp_path)
    assert src.describe() == {"source": "prompts", "items": 3, "batch_size": 2, "global_batch_size": 2,
                              "steps_per_epoch": 1.5}
    assert set(src.batch(0)["prompts"]) <= {"a cat", "a dog", "a fox"}
    both = BatchSource.from_config(DataConfig(images="imgs", prompts=["ignored"], resolution=R, batch_size=5),
                                   seed=0, base_dir=tmp_path)
    assert sorted(both.batch(0)["prompts"]) == sorted(CAPTIONS.values())
    assert "ignored" in both.describe()["note"]


# -- Hugging Face datasets ---------------------------------------------------------------------------------

def test_saved_hf_dataset_with_lazy_skipping(tmp_path, photos):
    datasets = pytest.importorskip("datasets")
    names = ["astronaut", "chelsea", "coffee", "rocket"]
    images = [photos[n] for n in names] + [{"bytes": b"definitely not an image", "path": None}]
    captions = [CAPTIONS[n] for n in names] + ["garbage"]
    images.append(photos["camera"])
    captions.append(None)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"image": images, "caption": captions}, features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "hf"))

    cfg = DataConfig(dataset="hf", caption_column="caption", resolution=R, batch_size=3)
    fresh = BatchSource.from_config(cfg, seed=2, base_dir=tmp_path)
    assert len(fresh) == 6 and fresh.describe()["checked"] == "lazily"
    assert fresh.describe()["skipped_total"] == 0  # nothing is read at construction
    resumed_early = BatchSource.from_config(cfg, seed=2, base_dir=tmp_path).batch(3)

    batches = [fresh.batch(s) for s in range(4)]  # two full epochs
    assert all(b["pixels"].shape == (3, 3, R, R) for b in batches)
    prompts = [p for b in batches for p in b["prompts"]]
    assert "garbage" not in prompts and set(prompts) <= set(CAPTIONS.values())
    assert fresh.describe()["skipped"] == {"unreadable image": 1, "missing caption": 1}  # counted once each
    assert resumed_early["prompts"] == batches[3]["prompts"]
    assert torch.equal(resumed_early["pixels"], batches[3]["pixels"])

    strict = BatchSource.from_config(cfg.model_copy(update={"strict": True}), seed=2, base_dir=tmp_path)
    with pytest.raises(DataError, match=r"row 4: unreadable image"):
        for s in range(4):
            strict.batch(s)

    with pytest.raises(DataError, match=r"no split 'validation'; its splits are \['train'\]"):
        BatchSource.from_config(cfg.model_copy(update={"dataset_split": "validation"}), seed=0, base_dir=tmp_path)
    with pytest.raises(DataError, match=r"no column\(s\) \['text'\]"):
        BatchSource.from_config(DataConfig(dataset=str(tmp_path / "hf"), resolution=R), seed=0)
