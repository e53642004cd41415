"""``distillkit eval`` for Stable Diffusion students: FID and CLIP score under a named protocol.

The caller supplies what cannot be downloaded here: the captions (a text file, one per line, or a COCO
``captions_*.json``), the reference images (a folder, or statistics saved by an earlier evaluation),
the Inception weights and the OpenCLIP weights. Generated images are kept only as Inception features
and CLIP cosines, so a 30k evaluation does not fill the disk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from distillkit.errors import DataError, UsageError
from distillkit.metrics.clip_score import CLIPScorer, clip_score
from distillkit.metrics.fid import InceptionFeatures, fid_from_features, load_stats, save_stats, stats_match
from distillkit.metrics.frechet import gaussian_stats, psd_sqrt
from distillkit.metrics.protocol import Protocol

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# -- captions and reference images -------------------------------------------------------------------
def read_captions(path: str | Path, count: int, seed: int = 0) -> list[str]:
    """``count`` captions: a text file's lines, or one caption per image of a COCO captions JSON; a seeded
    random subset when there are more (in file order when there are exactly enough)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"captions file {str(path)!r} not found")
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        first: dict[int, str] = {}
        for ann in data.get("annotations", []):
            first.setdefault(int(ann["image_id"]), str(ann["caption"]).strip())
        captions = [first[k] for k in sorted(first)]
    else:
        captions = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(captions) < count:
        raise DataError(f"{str(path)!r} holds {len(captions)} captions; the protocol needs {count} (or pass --count)")
    if len(captions) > count:
        pick = torch.randperm(len(captions), generator=torch.Generator().manual_seed(seed))[:count].sort().values
        captions = [captions[i] for i in pick.tolist()]
    return captions


def to_uint8(images01: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] → uint8, resized to ``size`` with PIL's bicubic filter when given."""
    from PIL import Image

    arr = (images01.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if size is None or arr.shape[-1] == size and arr.shape[-2] == size:
        return arr
    out = []
    for img in arr:
        pil = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((size, size), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1))
    return torch.stack(out)


def reference_batches(folder: str | Path, size: int, batch_size: int) -> Iterator[torch.Tensor]:
    """The reference folder's images, centre-cropped to a square and resized to ``size``, as uint8 batches."""
    from PIL import Image, ImageOps

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"reference folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    batch = []
    for f in files:
        with Image.open(f) as im:
            img = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
        batch.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def reference_stats(reference: str | Path, protocol: Protocol, inception: InceptionFeatures, cache_dir: Path,
                    batch_size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(μ, Σ, description) of the reference: a stats file as given, or a folder's (cached per protocol)."""
    size = protocol.resize or protocol.resolution
    expected = {"features": protocol.features, "size": size, "inception": Path(inception.weights).name}
    reference = Path(reference)
    if reference.is_file():
        mean, cov, meta = load_stats(reference)
        problem = stats_match(meta, {k: v for k, v in expected.items() if k in meta})
        if problem:
            raise UsageError(f"reference statistics {str(reference)!r} were made under another protocol: {problem}")
        return mean, cov, {"stats": str(reference), **meta}
    if not reference.is_dir():
        raise DataError(f"--reference {str(reference)!r} is neither an image folder nor a statistics file")
    cache = cache_dir / f"{reference.resolve().name}-{size}px-{Path(inception.weights).stem}.safetensors"
    if cache.is_file():
        mean, cov, meta = load_stats(cache)
        if stats_match(meta, {**expected, "folder": str(reference.resolve())}) is None:
            return mean, cov, {"stats": str(cache), **meta}
    feats = inception.features(reference_batches(reference, size, batch_size))
    mean, cov = gaussian_stats(feats)
    meta = {**expected, "folder": str(reference.resolve()), "count": feats.shape[0]}
    save_stats(cache, mean, cov, meta)
    return mean, cov, {"stats": str(cache), **{k: str(v) for k, v in meta.items()}}


# -- the evaluation ---------------------------------------------------------------------------------
def evaluate_sd(backbone, student, protocol: Protocol, steps: Sequence[int], *, captions: Sequence[str],
                reference: str | Path, inception_weights: str | Path, clip_weights: Optional[str | Path],
                cache_dir: str | Path, seed: int = 0, batch_size: int = 16, device="cpu",
                allow_random_clip: bool = False) -> dict:
    """FID and CLIP score of ``student`` at each step count, under ``protocol``."""
    from distillkit.inference import sample_images

    scorer = CLIPScorer(protocol.clip_model, clip_weights, device, allow_random_init=allow_random_clip)  # fails fast
    inception = InceptionFeatures(inception_weights, device)
    ref_mean, ref_cov, ref_info = reference_stats(reference, protocol, inception, Path(cache_dir), batch_size)
    ref_root = psd_sqrt(ref_cov.double())  # the one 2048×2048 decomposition, shared by every step count
    captions = list(captions)[:protocol.count]
    results = []
    for k in steps:
        feats, cosines, seconds = [], [], 0.0
        for start in range(0, len(captions), batch_size):
            chunk = captions[start:start + batch_size]
            begin = time.perf_counter()
            images = sample_images(backbone, student, chunk, k, seed + start, protocol.resolution, device)
            seconds += time.perf_counter() - begin
            uint8 = to_uint8(images, protocol.resize)
            feats.append(inception(uint8))
            cosines.append(scorer.cosines(uint8, chunk))
        all_cos = torch.cat(cosines)
        results.append({"steps": int(k), "seconds_per_sample": seconds / len(captions),
                        "metrics": {"fid": fid_from_features(torch.cat(feats), ref_mean, ref_cov, ref_root),
                                    "clip": clip_score(all_cos, protocol.clip_scale)}})
    info = {**protocol.to_dict(), "count": len(captions), "seed": seed, "reference_stats": ref_info,
            "inception_weights": str(inception_weights), "clip_weights": str(clip_weights)}
    return {"protocol": info, "noise_floor": None, "results": results}
