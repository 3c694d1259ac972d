"""The tiny pipeline is a real, loadable Stable Diffusion directory, built offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from imagineer_worker.training.tiny import TINY_RESOLUTION, build_tiny_pipeline, main


def test_tiny_pipeline_loads_and_generates(tiny_model: Path) -> None:
    from diffusers import StableDiffusionPipeline

    index = json.loads((tiny_model / "model_index.json").read_text())
    assert index["requires_safety_checker"] is False
    assert index["safety_checker"] == [None, None]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_model)
    assert pipe.unet.config.block_out_channels == [4, 8]
    assert pipe.unet.config.cross_attention_dim == 8
    assert pipe.text_encoder.config.hidden_size == 8
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert (pipe.scheduler.config.beta_start, pipe.scheduler.config.beta_end) == (0.00085, 0.012)
    # Any caption tokenises (byte-level vocabulary) and pads to CLIP's 77 positions.
    ids = pipe.tokenizer(["Ünïcode caption 🐱, with punctuation!"], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    assert ids.shape == (1, 77)
    assert int(ids.max()) < pipe.text_encoder.config.vocab_size
    image = pipe("a cat", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np").images[0]
    assert image.shape == (TINY_RESOLUTION, TINY_RESOLUTION, 3)
    assert np.isfinite(image).all()


def test_same_seed_same_weights_and_cli(tmp_path: Path, tiny_model: Path) -> None:
    assert main([str(tmp_path / "cli"), "--seed", "0"]) == 0
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        assert (tmp_path / "cli" / part).read_bytes() == (tiny_model / part).read_bytes(), part
    other = build_tiny_pipeline(tmp_path / "seed1", seed=1)
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (other / unet).read_bytes() != (tiny_model / unet).read_bytes()
