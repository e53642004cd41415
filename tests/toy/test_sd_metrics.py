"""FID and CLIP score for SD students, with randomly initialised networks saved to and loaded from local files.

The numbers of random networks mean nothing; what is tested is the mechanics a real evaluation relies
on: weights read from the given files only (no download, no unpickling), statistics cached per protocol,
the protocol carried by every result, and FID against hand-derivable cases.
"""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch

pytest.importorskip("torch_fidelity")
open_clip = pytest.importorskip("open_clip")

from distillkit.errors import ModelLoadError  # noqa: E402
from distillkit.metrics.protocol import PRESETS, Protocol  # noqa: E402
from distillkit.utils import seeded  # noqa: E402

TINY_CLIP = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """torch-fidelity's Inception architecture with random weights, saved as safetensors."""
    import torch_fidelity.feature_extractor_inceptionv3 as fi
    from safetensors.torch import save_file

    with seeded(0), mock.patch.object(fi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        net = fi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """A 1-layer OpenCLIP model registered under a test name, random weights saved to a file."""
    root = tmp_path_factory.mktemp("clip")
    (root / "distillkit-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(root / "distillkit-tiny-clip.json"))
    with seeded(0):
        model = open_clip.create_model("distillkit-tiny-clip")
    torch.save(model.state_dict(), root / "tiny_clip.pt")
    return root / "tiny_clip.pt"


@pytest.fixture(scope="module")
def reference_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("reference")
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        arr = (torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8).numpy()  # not square: centre-cropped
        Image.fromarray(arr).save(root / f"{i}.png")
    return root


def test_inception_reads_only_the_given_file(inception_file, tmp_path):
    from distillkit.metrics.fid import InceptionFeatures

    net = InceptionFeatures(inception_file)
    feats = net(torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()
    with pytest.raises(ModelLoadError, match="torch-fidelity"):
        InceptionFeatures(tmp_path / "missing.pth")
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ModelLoadError, match="not torch-fidelity's Inception"):
        InceptionFeatures(bad)


def test_reference_statistics_are_cached_per_protocol(inception_file, reference_folder, tmp_path):
    from distillkit.metrics.fid import InceptionFeatures, fid_from_features
    from distillkit.metrics.sd_eval import reference_batches, reference_stats

    net = InceptionFeatures(inception_file)
    protocol = Protocol(name="t", reference="three images", count=3, resolution=64, resize=32)
    mean, cov, info = reference_stats(reference_folder, protocol, net, tmp_path, batch_size=4)
    assert info["size"] == "32" and info["count"] == "3"
    with mock.patch.object(InceptionFeatures, "forward", side_effect=AssertionError("recomputed")):
        again = reference_stats(reference_folder, protocol, net, tmp_path, batch_size=4)
    assert torch.equal(again[0], mean)
    # the reference's own features are at FID 0 from its statistics
    own = net.features(reference_batches(reference_folder, 32, 4))
    assert fid_from_features(own, mean, cov) == pytest.approx(0.0, abs=1e-6)
    # another resize is another protocol: not read from the 32px cache
    other = protocol.with_(resize=16)
    assert not torch.equal(reference_stats(reference_folder, other, net, tmp_path, batch_size=4)[0], mean)


def test_captions_from_coco_json(tmp_path):
    from distillkit.metrics.sd_eval import read_captions

    coco = {"annotations": [{"image_id": 7, "caption": "b second"}, {"image_id": 3, "caption": "a first "},
                            {"image_id": 7, "caption": "b other"}, {"image_id": 9, "caption": "c third"}]}
    (tmp_path / "captions.json").write_text(json.dumps(coco))
    assert read_captions(tmp_path / "captions.json", 3) == ["a first", "b second", "c third"]
    subset = read_captions(tmp_path / "captions.json", 2, seed=1)
    assert len(subset) == 2 and set(subset) <= {"a first", "b second", "c third"}


def test_presets_name_their_protocol():
    add, gigagan = PRESETS["add-coco2017-5k"], PRESETS["gigagan-coco2014-30k-256"]
    assert (add.count, add.resize, add.clip_scale) == (5000, None, 1.0)
    assert (gigagan.count, gigagan.resize) == (30000, 256)
    d = gigagan.to_dict()
    assert d["resize_filter"] == "PIL bicubic" and "ViT-g-14" in d["clip"] and "Inception" in d["features"]


def test_sd_student_end_to_end(tiny_sd15_path, inception_file, clip_file, reference_folder, tmp_path):
    from distillkit.metrics.sd_eval import evaluate_sd
    from distillkit.models.sd15 import SD15Backbone
    from distillkit.roles.student import Student

    backbone = SD15Backbone.from_pretrained(tiny_sd15_path)
    student = Student.build(backbone, [999, 499])
    protocol = Protocol(name="tiny", reference="three random images", count=2, resolution=64, resize=32,
                        clip_model="distillkit-tiny-clip", clip_pretrained="random (test)")
    record = evaluate_sd(backbone, student, protocol, [1, 2], captions=["a red circle", "a blue square"],
                         reference=reference_folder, inception_weights=inception_file, clip_weights=clip_file,
                         cache_dir=tmp_path, batch_size=2)
    assert [r["steps"] for r in record["results"]] == [1, 2]
    for r in record["results"]:
        assert r["metrics"]["fid"] > 0 and 0 <= r["metrics"]["clip"] <= 1
    p = record["protocol"]
    assert p["count"] == 2 and p["resize"] == 32 and p["clip_model"] == "distillkit-tiny-clip"
    assert p["inception_weights"] == str(inception_file) and p["reference_stats"]["size"] == "32"
    with pytest.raises(ModelLoadError, match="--clip-weights"):
        evaluate_sd(backbone, student, protocol, [1], captions=["x"] * 2, reference=reference_folder,
                    inception_weights=inception_file, clip_weights=None, cache_dir=tmp_path)
