"""A tiny, randomly initialised Stable Diffusion pipeline, built offline in about a second.

Tests, the demo and smoke checks of the training queue need a *real* ``StableDiffusionPipeline``
directory (the same ``from_pretrained`` layout as a hub model) without network access or gigabytes
of weights. The sizes are the ones diffusers' own pipeline tests use: the UNet has about 5k
parameters, the VAE downsamples once (64x64 images <-> 32x32 latents) and the tokenizer is a
byte-level BPE with no merges, so any caption tokenises.

``python -m imagineer_worker.training.tiny OUT_DIR`` writes one from the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The model's natural image size: UNet sample_size 32 x VAE scale factor 2.
TINY_RESOLUTION = 64

_BOS, _PAD, _EOS = "<|startoftext|>", "!", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (what ByteLevel pre-tokenises to)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def tiny_vocab() -> dict[str, int]:
    """Specials at the ids the text encoder config expects (bos 0, pad 1, eos 2), then every byte
    character alone and as a word end: 515 ids, below the encoder's vocabulary of 1000."""
    vocab = {_BOS: 0, _PAD: 1, _EOS: 2}
    for suffix in ("", "</w>"):
        for ch in _bytes_to_unicode().values():
            token = ch + suffix
            if token not in vocab:
                vocab[token] = len(vocab)
    return vocab


def build_tiny_pipeline(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline with weights drawn from ``seed`` and ``save_pretrained`` it.

    Returns ``out_dir``, loadable with ``StableDiffusionPipeline.from_pretrained`` and with each
    component's ``from_pretrained(out_dir, subfolder=...)`` as the LoRA trainer loads it.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=TINY_RESOLUTION // 2,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8,
        norm_num_groups=2,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
        sample_size=TINY_RESOLUTION,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,
            hidden_size=8,
            intermediate_size=16,
            layer_norm_eps=1e-05,
            num_attention_heads=2,
            num_hidden_layers=2,
            vocab_size=1000,
            max_position_embeddings=77,
        )
    )
    tokenizer = CLIPTokenizer(
        vocab=tiny_vocab(),
        merges=[],
        bos_token=_BOS,
        eos_token=_EOS,
        unk_token=_EOS,
        pad_token=_PAD,
        model_max_length=77,  # without it padding="max_length" has no length to pad to
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imagineer_worker.training.tiny",
        description="Write a tiny random Stable Diffusion pipeline (offline) for tests and demos.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_pipeline(args.out_dir, seed=args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
