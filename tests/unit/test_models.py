"""Model-family adapters on tiny random models: loading, conditioning, the denoiser call, decoding, saving.

The reference for every convention is diffusers itself: prompts are compared with the pipelines'
``encode_prompt``, predictions with a direct UNet call, saved folders are loaded by the pipelines.
"""

from __future__ import annotations

import copy
import importlib.util
import json

import peft
import pytest
import torch
from diffusers import (DDPMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextModel, CLIPTokenizer

from distillkit.errors import ModelLoadError
from distillkit.models.adapters import UNetRef
from distillkit.models import (Conditioning, PixelBackbone, SD15Backbone, SDXLBackbone, check_tokenizer,
                               resolve_dtype)
from distillkit.testing import build_tiny_clip_vocab, tiny_clip_tokenizer
from distillkit.testing.tiny import tiny_sd_unet, tiny_sdxl_unet, tiny_text_encoder, tiny_vae
from distillkit.testing.tokenizer import ASSETS

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def lora_unet(unet: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A LoRA-adapted copy whose adapter actually changes the output (peft initialises B to zero)."""
    unet = copy.deepcopy(unet)
    unet.add_adapter(peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return unet


def perturbed(unet: torch.nn.Module) -> torch.nn.Module:
    """A full copy with different weights, standing in for a trained student."""
    unet = copy.deepcopy(unet)
    with torch.no_grad():
        unet.conv_out.bias.add_(0.5)
    return unet


def unet_output(backbone, unet, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(backbone.sample_shape(2, 8 * backbone.spatial_factor), generator=gen)  # 8×8 cells
    cond = backbone.encode_prompts(["a photo of a dog", "red"], 64)
    return backbone.denoise(unet, x, torch.tensor([10, 900]), cond).output


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# -- the tiny tokenizer ---------------------------------------------------------------------------
def test_tiny_tokenizer_is_a_real_clip_vocabulary():
    tok = tiny_clip_tokenizer()
    assert len(tok) == 512 + 1000 + 2
    assert tok.convert_ids_to_tokens([tok.bos_token_id, tok.eos_token_id]) == ["<|startoftext|>", "<|endoftext|>"]
    assert tok.model_max_length == 77


def test_tiny_tokenizer_gives_clip_ids_for_words_within_its_merges():
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    reference = open_clip_tokenizer.SimpleTokenizer()
    tok = tiny_clip_tokenizer()
    candidates = "a photo of the in on at and red man with from this that dog painting house blue".split()
    covered = [w for w in candidates if all(i < len(tok) - 2 for i in reference.encode(w))]
    assert len(covered) >= 10  # the comparison must cover real words, not vacuously pass
    sentence = " ".join(covered)
    ours = tok(sentence).input_ids
    assert ours[0] == tok.bos_token_id and ours[-1] == tok.eos_token_id
    assert ours[1:-1] == reference.encode(sentence)


def test_committed_tokenizer_assets_match_the_generator(tmp_path):
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip (which ships the CLIP merges) is not installed")
    build_tiny_clip_vocab(tmp_path, n_merges=1000)
    for name in ("vocab.json", "merges.txt"):
        assert (tmp_path / name).read_bytes() == (ASSETS / name).read_bytes(), name


def test_check_tokenizer_rejects_the_offline_placeholder():
    placeholder = CLIPTokenizer(vocab={"<|startoftext|>": 0, "<|endoftext|>": 1}, merges=[])
    assert len(placeholder) == 2
    with pytest.raises(ModelLoadError, match="has only 2 tokens") as err:
        check_tokenizer(placeholder, "runwayml/stable-diffusion-v1-5")
    message = str(err.value)
    assert "runwayml/stable-diffusion-v1-5" in message and "offline" in message and "local diffusers folder" in message
    check_tokenizer(tiny_clip_tokenizer(), "tiny")  # a real vocabulary passes


def test_hub_id_offline_fails_with_the_tokenizer_message():
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        pytest.skip("only meaningful (and fast) with HF_HUB_OFFLINE=1")
    with pytest.raises(ModelLoadError, match="has only 2 tokens"):
        SD15Backbone.from_pretrained("runwayml/stable-diffusion-v1-5")


# -- loading ------------------------------------------------------------------------------------
def test_missing_folder_names_the_path_and_the_layout(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError) as err:
        SD15Backbone.from_pretrained(missing)
    assert str(missing) in str(err.value) and "model_index.json" in str(err.value) and "vae/" in str(err.value)


def test_folder_without_a_component_names_what_is_missing(tiny_pixel_path):
    with pytest.raises(ModelLoadError, match=r"has no vae/"):
        SD15Backbone.from_pretrained(tiny_pixel_path)


def test_sd15_loads_bit_identical_to_the_built_components(tiny_sd15):
    tok = tiny_clip_tokenizer()
    assert_same_weights(tiny_sd15.teacher_unet, tiny_sd_unet())
    assert_same_weights(tiny_sd15.text_encoder, tiny_text_encoder(tok))
    assert_same_weights(tiny_sd15.vae, tiny_vae(scaling_factor=0.18215))
    assert tiny_sd15.tokenizer("a photo of the man").input_ids == tok("a photo of the man").input_ids
    assert isinstance(tiny_sd15.scheduler, DDPMScheduler)
    assert tiny_sd15.prediction_type == "epsilon"
    torch.testing.assert_close(tiny_sd15.schedule.alphas_cumprod,
                               tiny_sd15.scheduler.alphas_cumprod.double(), rtol=0, atol=1e-7)


def test_sdxl_loads_bit_identical_and_keeps_its_scheduler_class(tiny_sdxl):
    assert_same_weights(tiny_sdxl.teacher_unet, tiny_sdxl_unet())
    assert_same_weights(tiny_sdxl.vae, tiny_vae(scaling_factor=0.13025))
    assert isinstance(tiny_sdxl.scheduler, EulerDiscreteScheduler)
    assert tiny_sdxl.force_zeros_for_empty_prompt is True


def test_everything_loaded_is_frozen(tiny_sd15, tiny_sdxl, tiny_pixel):
    expected = {
        "sd15": {"text_encoder", "vae", "teacher_unet"},
        "sdxl": {"text_encoder", "text_encoder_2", "vae", "teacher_unet"},
        "pixel": {"text_encoder", "teacher_unet"},
    }
    for backbone in (tiny_sd15, tiny_sdxl, tiny_pixel):
        modules = backbone.frozen_modules()
        assert set(modules) == expected[backbone.family]
        for name, module in modules.items():
            assert not module.training, name
            assert not any(p.requires_grad for p in module.parameters()), name


def test_dtype_applies_to_every_network(tiny_sd15_path, tiny_sdxl_path):
    sd15 = SD15Backbone.from_pretrained(tiny_sd15_path, dtype="bfloat16")
    assert {p.dtype for m in sd15.frozen_modules().values() for p in m.parameters()} == {torch.bfloat16}
    assert sd15.dtype == torch.bfloat16
    x = torch.randn(sd15.sample_shape(2, 64))
    pred = sd15.denoise(sd15.teacher_unet, x, torch.tensor([5, 500]), sd15.encode_prompts(["a", "b"], 64))
    assert pred.output.dtype == torch.float32 and torch.isfinite(pred.x0).all()
    # SDXL's VAE asks for float32 (force_upcast) in float16 runs; the rest follows the requested dtype
    sdxl = SDXLBackbone.from_pretrained(tiny_sdxl_path, dtype=torch.float16)
    assert sdxl.vae.dtype == torch.float32
    assert sdxl.teacher_unet.dtype == sdxl.text_encoder_2.dtype == torch.float16


def test_resolve_dtype():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype("float64")


# -- conditioning ----------------------------------------------------------------------------------
def test_sd15_prompts_match_the_pipeline_encoding(tiny_sd15, tiny_sd15_path):
    prompts = ["a photo of a dog", "the red house", "a"]
    cond = tiny_sd15.encode_prompts(prompts, 64)
    assert cond.embeds.shape == (3, 77, 32) and cond.pooled is None and cond.time_ids is None
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15_path)
    embeds, negative = pipe.encode_prompt(prompts, "cpu", 1, True)
    torch.testing.assert_close(cond.embeds, embeds, rtol=0, atol=0)
    empty = tiny_sd15.empty_conditioning(3, 64)
    torch.testing.assert_close(empty.embeds, negative, rtol=0, atol=0)


def test_sdxl_prompts_match_the_pipeline_encoding(tiny_sdxl, tiny_sdxl_path):
    prompts = ["a photo of a dog", "the red house"]
    cond = tiny_sdxl.encode_prompts(prompts, 512)
    assert cond.embeds.shape == (2, 77, 64) and cond.pooled.shape == (2, 32) and cond.time_ids.shape == (2, 6)
    assert cond.time_ids.tolist() == [[512, 512, 0, 0, 512, 512]] * 2
    assert cond.to(torch.float16).time_ids.dtype == torch.long  # stays exact under half-precision casts
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl_path)
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompts, device="cpu")
    torch.testing.assert_close(cond.embeds, embeds, rtol=0, atol=0)
    torch.testing.assert_close(cond.pooled, pooled, rtol=0, atol=0)
    empty = tiny_sdxl.empty_conditioning(2, 512)
    assert torch.count_nonzero(empty.embeds) == 0 and torch.count_nonzero(empty.pooled) == 0
    torch.testing.assert_close(empty.embeds, negative, rtol=0, atol=0)
    torch.testing.assert_close(empty.pooled, negative_pooled, rtol=0, atol=0)
    assert empty.time_ids.tolist() == cond.time_ids.tolist()


def test_sdxl_empty_prompt_is_encoded_without_force_zeros(tiny_sdxl):
    tiny_sdxl.force_zeros_for_empty_prompt = False
    empty = tiny_sdxl.empty_conditioning(3, 64)
    encoded = tiny_sdxl.encode_prompts([""], 64)
    assert empty.batch_size == 3 and torch.count_nonzero(empty.embeds) > 0
    torch.testing.assert_close(empty.embeds[2:], encoded.embeds, rtol=0, atol=0)
    torch.testing.assert_close(empty.pooled[:1], encoded.pooled, rtol=0, atol=0)


def test_a_single_string_is_one_prompt(tiny_sd15):
    assert tiny_sd15.encode_prompts("a photo", 64).batch_size == 1


# -- the denoiser call ------------------------------------------------------------------------------
def _by_hand_x0(scheduler, eps, x_t, t):
    ac = scheduler.alphas_cumprod.double()[t].reshape(-1, 1, 1, 1)
    alpha, sigma = ac.sqrt().float(), (1 - ac).sqrt().float()
    return (x_t - sigma * eps) / alpha


def test_sd15_denoise_x0_matches_a_direct_unet_call(tiny_sd15):
    gen = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([3, 999])
    cond = tiny_sd15.encode_prompts(["a dog", "a house"], 64)
    pred = tiny_sd15.denoise(tiny_sd15.teacher_unet, x_t, t, cond)
    with torch.no_grad():
        eps = tiny_sd15.teacher_unet(x_t, t, encoder_hidden_states=cond.embeds).sample
    assert pred.kind == "epsilon"
    torch.testing.assert_close(pred.output, eps, rtol=0, atol=0)
    torch.testing.assert_close(pred.x0, _by_hand_x0(tiny_sd15.scheduler, eps, x_t, t))


def test_sdxl_denoise_passes_the_added_conditions(tiny_sdxl):
    gen = torch.Generator().manual_seed(0)
    x_t, t = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([250, 750])
    cond = tiny_sdxl.encode_prompts(["a dog", "a house"], 64)
    pred = tiny_sdxl.denoise(tiny_sdxl.teacher_unet, x_t, t, cond)
    with torch.no_grad():
        eps = tiny_sdxl.teacher_unet(x_t, t, encoder_hidden_states=cond.embeds, added_cond_kwargs={
            "text_embeds": cond.pooled, "time_ids": cond.time_ids}).sample
    torch.testing.assert_close(pred.output, eps, rtol=0, atol=0)
    torch.testing.assert_close(pred.x0, _by_hand_x0(tiny_sdxl.scheduler, eps, x_t, t))
    with pytest.raises(ValueError, match="pooled"):
        tiny_sdxl.denoise(tiny_sdxl.teacher_unet, x_t, t, Conditioning(cond.embeds))


def test_denoise_broadcasts_a_scalar_timestep(tiny_sd15):
    x_t = torch.randn(3, 4, 8, 8)
    cond = tiny_sd15.empty_conditioning(3, 64)
    a = tiny_sd15.denoise(tiny_sd15.teacher_unet, x_t, torch.tensor(400), cond)
    b = tiny_sd15.denoise(tiny_sd15.teacher_unet, x_t, torch.tensor([400, 400, 400]), cond)
    torch.testing.assert_close(a.x0, b.x0, rtol=0, atol=0)


# -- pixels <-> diffusion space -------------------------------------------------------------------------
def test_encode_images_is_deterministic_scaled_latents(tiny_sd15):
    pixels = torch.rand(2, 3, 64, 64) * 2 - 1
    latents = tiny_sd15.encode_images(pixels)
    assert latents.shape == tiny_sd15.sample_shape(2, 64) == (2, 4, 8, 8)
    torch.testing.assert_close(tiny_sd15.encode_images(pixels), latents, rtol=0, atol=0)
    with torch.no_grad():
        mean = tiny_sd15.vae.encode(pixels).latent_dist.mean
    torch.testing.assert_close(latents, mean * 0.18215)


def test_decode_keeps_the_graph_and_the_vae_frozen(tiny_sd15):
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    pixels = tiny_sd15.decode(latents)
    assert pixels.shape == (2, 3, 64, 64)
    pixels.square().mean().backward()
    assert latents.grad is not None and torch.isfinite(latents.grad).all() and latents.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_sd15.vae.parameters())


def test_decode_returns_the_input_dtype(tiny_sd15_path):
    backbone = SD15Backbone.from_pretrained(tiny_sd15_path, dtype="bfloat16")
    assert backbone.decode(torch.randn(1, 4, 8, 8)).dtype == torch.float32


# -- saving ------------------------------------------------------------------------------------------
def test_sd15_saved_pipeline_loads_and_samples(tiny_sd15, tmp_path):
    student = perturbed(tiny_sd15.teacher_unet)
    tiny_sd15.save_pipeline(student, tmp_path / "out")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "out")
    assert_same_weights(pipe.unet, student)
    assert pipe.safety_checker is None
    images = pipe("a photo of a dog", num_inference_steps=1, height=64, width=64, output_type="np").images
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(torch.from_numpy(images)).all()


def test_sdxl_saved_pipeline_loads_and_samples(tiny_sdxl, tmp_path):
    student = perturbed(tiny_sdxl.teacher_unet)
    tiny_sdxl.save_pipeline(student, tmp_path / "out")
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "out")
    assert_same_weights(pipe.unet, student)
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert json.loads((tmp_path / "out" / "model_index.json").read_text())["force_zeros_for_empty_prompt"] is True
    images = pipe("a photo of a dog", num_inference_steps=1, height=64, width=64, output_type="np").images
    assert images.shape == (1, 64, 64, 3) and torch.isfinite(torch.from_numpy(images)).all()


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_lora_file_loads_into_the_pipeline(family, request, tmp_path):
    backbone = request.getfixturevalue(f"tiny_{family}")
    pipeline_cls = {"sd15": StableDiffusionPipeline, "sdxl": StableDiffusionXLPipeline}[family]
    student = lora_unet(backbone.teacher_unet)
    expected = unet_output(backbone, student)
    assert not torch.allclose(expected, unet_output(backbone, backbone.teacher_unet), atol=1e-3)
    backbone.save_lora(UNetRef(student, "default"), tmp_path / "lora")
    pipe = pipeline_cls.from_pretrained(request.getfixturevalue(f"tiny_{family}_path"))
    pipe.load_lora_weights(tmp_path / "lora")
    torch.testing.assert_close(unet_output(backbone, pipe.unet), expected)


def test_save_lora_needs_an_adapter(tiny_sd15, tmp_path):
    with pytest.raises(ValueError, match="LoRA"):
        tiny_sd15.save_lora(tiny_sd15.teacher_unet, tmp_path / "lora")


def test_saving_a_lora_unet_as_a_pipeline_merges_a_copy(tiny_sd15, tmp_path):
    student = lora_unet(tiny_sd15.teacher_unet)
    expected = unet_output(tiny_sd15, student)
    tiny_sd15.save_pipeline(UNetRef(student, "default"), tmp_path / "merged")
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged", subfolder="unet")
    assert not any("lora" in name for name in merged.state_dict())
    torch.testing.assert_close(unet_output(tiny_sd15, merged), expected, rtol=1e-4, atol=1e-5)
    assert student.peft_config and any("lora_B" in n for n, _ in student.named_parameters())  # untouched


# -- pixel space ----------------------------------------------------------------------------------------
def test_pixel_backbone_is_the_identity_around_the_unet(tiny_pixel):
    assert tiny_pixel.vae is None and tiny_pixel.channels == 3
    assert tiny_pixel.sample_shape(2, 16) == (2, 3, 16, 16)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    assert tiny_pixel.decode(x) is x
    torch.testing.assert_close(tiny_pixel.encode_images(x.detach()), x.detach(), rtol=0, atol=0)
    pred = tiny_pixel.denoise(tiny_pixel.teacher_unet, x, torch.tensor([1, 2]), tiny_pixel.empty_conditioning(2, 16))
    pred.x0.sum().backward()
    assert x.grad is not None


def test_pixel_round_trip(tiny_pixel, tmp_path):
    student = perturbed(tiny_pixel.teacher_unet)
    tiny_pixel.save_pipeline(student, tmp_path / "out")
    reloaded = PixelBackbone.from_pretrained(tmp_path / "out")
    assert_same_weights(reloaded.teacher_unet, student)
    assert_same_weights(reloaded.text_encoder, tiny_pixel.text_encoder)
    torch.testing.assert_close(unet_output(reloaded, reloaded.teacher_unet), unet_output(tiny_pixel, student))


def test_pixel_folder_needs_its_manifest(tiny_sd15_path, tmp_path):
    with pytest.raises(ModelLoadError, match="distillkit_pixel.json"):
        PixelBackbone.from_pretrained(tiny_sd15_path)


def test_pixel_manifest_with_other_classes_is_refused(tiny_pixel, tmp_path):
    tiny_pixel.save_pipeline(tiny_pixel.teacher_unet, tmp_path / "out")
    manifest = tmp_path / "out" / "distillkit_pixel.json"
    data = json.loads(manifest.read_text())
    data["unet"] = ["diffusers", "UNet2DModel"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="UNet2DModel"):
        PixelBackbone.from_pretrained(tmp_path / "out")


def test_text_encoder_pools_at_the_tokenizer_eos(tiny_sd15):
    """The tiny encoder's eos id must be the tokenizer's, or CLIP pools at the wrong position."""
    assert isinstance(tiny_sd15.text_encoder, CLIPTextModel)
    assert tiny_sd15.text_encoder.config.eos_token_id == tiny_sd15.tokenizer.eos_token_id
