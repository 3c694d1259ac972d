"""Figures 7 and 8: the project's LoRA loop against the same loop written plainly.

The reference (:func:`reference_loop`) follows diffusers' ``examples/text_to_image/train_text_to_image_lora.py``
without accelerate: the frozen VAE, text encoder and UNet in ``weight_dtype``, a peft LoRA
(gaussian init, alpha = rank) on ``to_q/to_k/to_v/to_out.0`` kept in float32, a shuffled
``DataLoader`` with the example's transforms applied on the fly, VAE encode and text encode every
step, DDPM noise, MSE, ``clip_grad_norm_(1.0)``, AdamW, a constant LR schedule, ``loss.item()``
every step, autocast in bf16 on CUDA.

The project's loop is :func:`imagineer_worker.training.lora.train_lora`, as the training task
calls it, on the same model directory, images, captions, rank, resolution, batch size and dtype.

Both report the wall time of each step (the project's through its progress callback, which the
task uses too); the first ``--warmup`` steps are left out, and the runs alternate in one process.

    python -m bench.training --size tiny --device cpu           # figure 7 (make bench)
    python -m bench.training --size sd15 --device cuda          # figure 8 (bench/gpu.sh)

``--size sd15`` builds an SD-1.5-sized pipeline from its configs with random weights (no download):
UNet 860M parameters, VAE 84M, CLIP ViT-L/14 text encoder 123M, saved once as safetensors.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TARGET_MODULES = ["to_k", "to_q", "to_v", "to_out.0"]


# --- models and data -----------------------------------------------------------------------------

def build_sd15(out_dir: Path, dtype: Any, mini: bool = False) -> Path:
    """A Stable Diffusion 1.5-sized pipeline with random weights, from the published configs.

    ``mini``: the same architecture with every width divided down (for checking the code path on a
    CPU in seconds).
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from imagineer_worker.training.tiny import build_tiny_pipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = build_tiny_pipeline(out_dir / "tiny")  # its byte-level tokenizer tokenises any caption
    torch.manual_seed(0)
    div, groups = (40, 8) if mini else (1, 32)
    hidden = 768 // (24 if mini else 1)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=groups,
        block_out_channels=tuple(c // div for c in (320, 640, 1280, 1280)), cross_attention_dim=hidden,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    ).to(dtype)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=tuple(c // (16 if mini else 1) for c in (128, 256, 512, 512)), norm_num_groups=groups,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    ).to(dtype)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=12 // (6 if mini else 1),
        num_hidden_layers=12 // (6 if mini else 1),
        max_position_embeddings=77, vocab_size=49408, bos_token_id=0, pad_token_id=1, eos_token_id=2,
        hidden_act="quick_gelu", projection_dim=768,
    )).to(dtype)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False)
    tokenizer = StableDiffusionPipeline.from_pretrained(tiny).tokenizer
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    path = out_dir / "sd15-random"
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_model(size: str, workdir: Path, dtype: Any) -> Path:
    if size == "tiny":
        from imagineer_worker.training.tiny import build_tiny_pipeline

        return build_tiny_pipeline(workdir / "tiny-sd", seed=0)
    return build_sd15(workdir, dtype, mini=size == "sd15-mini")


def write_dataset(data_dir: Path, count: int, resolution: int) -> str:
    """``count`` structured RGB images (a bit larger than ``resolution``) and a training manifest."""
    import numpy as np
    from PIL import Image

    base = Path("labels") / "bench"
    items = []
    side = resolution + resolution // 4
    yy, xx = np.mgrid[0:side, 0:side]
    for i in range(count):
        rgb = np.stack([(xx * 255 // side + 40 * i) % 256, (yy * 255 // side) % 256,
                        ((xx // 16 + yy // 16 + i) % 2) * 255], axis=-1).astype("uint8")
        relative = base / "images" / f"{i}.png"
        (data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(data_dir / relative)
        items.append({"image": str(relative), "caption": f"a checkered picture number {i}"})
    manifest = base / "manifest.json"
    (data_dir / manifest).write_text(json.dumps({"dataset_id": "bench", "items": items}))
    return str(manifest)


# --- the reference loop --------------------------------------------------------------------------

def reference_loop(model_dir: Path, data_dir: Path, manifest: str, *, steps: int, rank: int, resolution: int,
                   batch_size: int, learning_rate: float, device: str, weight_dtype: Any, seed: int,
                   on_step: Callable[[int, float], None], compile_unet: bool = False) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F  # noqa: N812
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig
    from PIL import Image
    from transformers import CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    noise_scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet_lora_config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                  target_modules=TARGET_MODULES)
    unet.to(device, dtype=weight_dtype)
    vae.to(device, dtype=weight_dtype)
    text_encoder.to(device, dtype=weight_dtype)
    unet.add_adapter(unet_lora_config)
    if weight_dtype != torch.float32:
        cast_training_params(unet, dtype=torch.float32)
    lora_layers = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_layers, lr=learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-08)
    forward = torch.compile(unet) if compile_unet else unet

    # The example's transforms: Resize(res, bilinear), CenterCrop(res), ToTensor, Normalize([0.5], [0.5]).
    def transform(image: Any) -> Any:
        w, h = image.size
        scale = resolution / min(w, h)
        image = image.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))),
                             Image.Resampling.BILINEAR)
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        array = np.asarray(image, dtype=np.float32) / 255.0
        return (torch.from_numpy(array).permute(2, 0, 1) - 0.5) / 0.5

    items = json.loads((data_dir / manifest).read_text())["items"]

    class DS(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(items)

        def __getitem__(self, i: int) -> dict[str, Any]:
            with Image.open(data_dir / items[i]["image"]) as im:
                pixels = transform(im.convert("RGB"))
            ids = tokenizer(items[i]["caption"], max_length=tokenizer.model_max_length, padding="max_length",
                            truncation=True, return_tensors="pt").input_ids[0]
            return {"pixel_values": pixels, "input_ids": ids}

    def collate_fn(examples: list[dict[str, Any]]) -> dict[str, Any]:
        pixel_values = torch.stack([e["pixel_values"] for e in examples])
        pixel_values = pixel_values.to(memory_format=torch.contiguous_format).float()
        return {"pixel_values": pixel_values, "input_ids": torch.stack([e["input_ids"] for e in examples])}

    loader = torch.utils.data.DataLoader(DS(), shuffle=True, collate_fn=collate_fn, batch_size=batch_size,
                                         num_workers=0)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=steps)
    autocast = (torch.autocast(device_type="cuda", dtype=weight_dtype)
                if device == "cuda" and weight_dtype != torch.float32 else contextlib.nullcontext())
    unet.train()
    step = 0
    for _epoch in range(math.ceil(steps * batch_size / len(items)) + 1):
        for batch in loader:
            latents = vae.encode(batch["pixel_values"].to(device, dtype=weight_dtype)).latent_dist.sample()
            latents = latents * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            bsz = latents.shape[0]
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device)
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps.long())
            encoder_hidden_states = text_encoder(batch["input_ids"].to(device), return_dict=False)[0]
            if noise_scheduler.config.prediction_type == "epsilon":
                target = noise
            else:
                target = noise_scheduler.get_velocity(latents, noise, timesteps)
            with autocast:
                model_pred = forward(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(lora_layers, 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            step += 1
            on_step(step, loss.detach().item())
            if step >= steps:
                return


# --- the project's loop --------------------------------------------------------------------------

def project_loop(model_dir: Path, data_dir: Path, manifest: str, *, steps: int, rank: int, resolution: int,
                 batch_size: int, learning_rate: float, seed: int, job_id: str,
                 on_step: Callable[[int, float], None]) -> None:
    from imagineer_worker.storage import DataDir
    from imagineer_worker.training.job import TrainConfig
    from imagineer_worker.training.lora import train_lora

    config = TrainConfig(job_id=job_id, base_model=str(model_dir), manifest=manifest, steps=steps, rank=rank,
                         learning_rate=learning_rate, resolution=resolution, batch_size=batch_size,
                         checkpoint_every=steps + 1, seed=seed)
    train_lora(config, data=DataDir(data_dir), progress=lambda step, _total, loss: on_step(step, loss))


# --- the figure ----------------------------------------------------------------------------------

def measure(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    import torch

    if args.threads:
        # One thread by default on the CPU: the tiny model gains nothing from intra-op threads, and
        # OpenMP's spinning threads collapse (20x slower) when another job takes the other core.
        torch.set_num_threads(args.threads)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-training-"))
    data_dir = workdir / "data"
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    # The project chooses bf16 frozen weights on CUDA and float32 on the CPU by itself; the reference
    # is given the same.
    weight_dtype = torch.bfloat16 if cuda else torch.float32
    resolution = args.resolution or (64 if args.size == "tiny" else 512)
    started = time.monotonic()
    model_dir = build_model(args.size, workdir, weight_dtype)
    manifest = write_dataset(data_dir, args.images, resolution)
    log(f"training ({args.size}, {args.device}, {str(weight_dtype).removeprefix('torch.')}, {resolution} px, "
        f"batch {args.batch_size}, rank {args.rank}): model built in {time.monotonic() - started:.1f}s; "
        f"{args.reps} alternating runs of {args.steps} steps ({args.warmup} warm-up)")
    common = {"steps": args.steps, "rank": args.rank, "resolution": resolution, "batch_size": args.batch_size,
              "learning_rate": 1e-4, "seed": 0}
    variants = ["project", "reference"] + (["reference_compiled"] if args.compile else [])
    runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    for rep in range(args.reps):
        # torch.compile costs a minute or more per run on a full-size UNet: fewer repetitions of it
        this = [v for v in variants if v != "reference_compiled" or rep < args.compile_reps]
        order = this[rep % len(this):] + this[:rep % len(this)]
        for variant in order:
            stamps: list[float] = []
            losses: list[float] = []

            def on_step(_step: int, loss: float, stamps: list[float] = stamps, losses: list[float] = losses) -> None:
                if cuda:
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())
                losses.append(loss)

            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            began = time.perf_counter()
            if variant == "project":
                project_loop(model_dir, data_dir, manifest, job_id=f"bench-{rep}", on_step=on_step, **common)
            else:
                reference_loop(model_dir, data_dir, manifest, device=args.device, weight_dtype=weight_dtype,
                               on_step=on_step, compile_unet=variant.endswith("compiled"), **common)
            steps = [b - a for a, b in zip(stamps[args.warmup:], stamps[args.warmup + 1:], strict=False)]
            result = {"seconds_per_step": statistics.median(steps), "steps_per_second": 1 / statistics.median(steps),
                      "total_seconds": time.perf_counter() - began, "final_loss": losses[-1]}
            if cuda:
                result["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
            runs[variant].append(result)
            log(f"  rep {rep + 1}/{args.reps} {variant}: " +
                " ".join(f"{k}={v:.4g}" for k, v in result.items()))
    out: dict[str, Any] = {"size": args.size, "device": args.device, "dtype": str(weight_dtype).removeprefix("torch."),
                           "resolution": resolution, "batch_size": args.batch_size, "rank": args.rank,
                           "steps": args.steps, "warmup": args.warmup, "torch": torch.__version__,
                           "threads": torch.get_num_threads()}
    for variant, values in runs.items():
        if values:
            out[variant] = {k: _summary([v[k] for v in values]) for k in values[0]}
    out["ratio"] = out["project"]["steps_per_second"]["median"] / out["reference"]["steps_per_second"]["median"]
    return out


def _summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("tiny", "sd15", "sd15-mini"), default="tiny",
                        help="sd15-mini: the SD-1.5 architecture with narrow layers (checks the code path on a CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--resolution", type=int, default=0, help="default: 64 (tiny) or 512 (sd15)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also the reference with torch.compile(unet)")
    parser.add_argument("--compile-reps", type=int, default=2, help="repetitions of the compiled variant")
    parser.add_argument("--table", action="store_true", help="print a Markdown table instead of the JSON")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: 1 on the CPU, torch's own choice on CUDA)")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--out", type=Path, help="write the figure as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    _quiet()
    out = measure(args)
    text = json.dumps(out, indent=2)
    if args.out:
        args.out.write_text(text)
    if args.table:
        from bench import report

        number = "8 LoRA GPU" if args.device == "cuda" else f"8 LoRA ({args.device})"
        print(report.table(report.training_rows(out, number)))
    else:
        print(text if not args.out else f"wrote {args.out}")
    return 0


def _quiet() -> None:
    """diffusers warns on every ``.to(dtype)`` of a model it wants partly in float32 (none here)."""
    import logging

    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    dlogging.set_verbosity_error()
    tlogging.set_verbosity_error()
    logging.getLogger("imagineer_worker").setLevel(logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
