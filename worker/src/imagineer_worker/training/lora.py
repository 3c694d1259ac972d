"""LoRA fine-tuning of a Stable Diffusion UNet, resumable and interruptible.

The recipe is diffusers' ``examples/text_to_image/train_text_to_image_lora.py``: frozen VAE, text
encoder and UNet; a peft LoRA (``init_lora_weights="gaussian"``, alpha = rank) on the attention
projections; DDPM noise-prediction MSE (or v-prediction when the scheduler says so); AdamW
(0.9, 0.999, 1e-2, 1e-8), gradient clipping at 1.0 and a constant learning rate. CUDA trains the
frozen weights in bf16 with the LoRA weights in float32; the CPU trains in float32.

What the example leaves to ``accelerate`` is done here so a Celery task can own it:

- every ``checkpoint_every`` steps, the LoRA weights, AdamW state, loss history and random states
  go to ``checkpoints/step-<N>`` (see :mod:`.checkpoint`); a second delivery of the same job
  resumes from the newest and produces the same losses as an uninterrupted run;
- ``SoftTimeLimitExceeded`` saves a checkpoint at the last finished step and becomes
  ``TrainingInterrupted``; the parameter update itself runs with the soft limit deferred, so an
  interruption never lands between a half-applied AdamW step and its bookkeeping;
- a finished job delivered again returns its result without training.

This module imports torch, diffusers, transformers and peft: import it inside the task body only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import peft
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
import transformers
from celery.exceptions import SoftTimeLimitExceeded
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from PIL import Image, ImageOps
from transformers import CLIPTextModel, CLIPTokenizer

from imagineer_worker.storage import DataDir, atomic_write_json
from imagineer_worker.training import checkpoint as ckpt_io
from imagineer_worker.training.dataset import Dataset, load_manifest
from imagineer_worker.training.errors import BaseModelError, TrainingDiverged, TrainingInterrupted
from imagineer_worker.training.job import (
    WEIGHTS_NAME,
    JobFiles,
    TrainConfig,
    TrainResult,
    check_fingerprint,
    completed_result,
    job_lock,
    utcnow,
)
from imagineer_worker.training.softlimit import soft_limit_deferred

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, float], None]
"""``progress(step, total, loss)``, called after every finished step (and its checkpoint)."""

TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 1e-2
ADAM_EPSILON = 1e-8
MAX_GRAD_NORM = 1.0
# Decoded, resized images are cached while the whole dataset fits in this many bytes.
PIXEL_CACHE_BYTES = 256 * 1024 * 1024


def select_device() -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 frozen weights when a GPU is visible (bf16 needs no loss scaling); otherwise
    the CPU in float32, where bf16 is slow and imprecise."""
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.device("cuda"), dtype
    return torch.device("cpu"), torch.float32


def load_pixels(path: Path, resolution: int) -> torch.Tensor:
    """Resize the short side to ``resolution`` (bilinear), center-crop a square, scale to [-1, 1];
    the example's ``Resize`` + ``CenterCrop`` + ``Normalize([0.5], [0.5])``, without torchvision."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(size, Image.Resampling.BILINEAR)
    left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class _Batches:
    """Batch ``step`` (1-based) as a pure function of (seed, step): one shuffled permutation per
    epoch, so a resumed run sees exactly the images the uninterrupted run would have seen."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=gen)
        return self._perm

    def indices(self, step: int) -> list[int]:
        out = []
        for position in range((step - 1) * self.batch_size, step * self.batch_size):
            epoch, offset = divmod(position, self.size)
            out.append(int(self._permutation(epoch)[offset]))
        return out


class _Trainer:
    def __init__(self, config: TrainConfig, dataset: Dataset, files: JobFiles, fingerprint: dict[str, Any],
                 progress: ProgressCallback | None) -> None:
        self.config, self.dataset, self.files = config, dataset, files
        self.fingerprint, self.progress = fingerprint, progress
        self.device, self.weight_dtype = select_device()
        self.done = 0  # last finished step; the model state always matches it
        self.saved_step = 0  # newest checkpoint on disk
        self.losses: list[float] = []
        self.ready = False
        self.meta: dict[str, Any] = {}
        self.loop_seconds = 0.0  # wall time of the steps run by this delivery
        self.loop_steps = 0
        # Set by _load():
        self.vae: AutoencoderKL
        self.text_encoder: CLIPTextModel
        self.unet: UNet2DConditionModel
        self.scheduler: DDPMScheduler
        self.params: list[torch.nn.Parameter]
        self.optimizer: torch.optim.AdamW
        self.generator: torch.Generator
        self.input_ids: torch.Tensor
        self.cache: dict[int, torch.Tensor] | None = None
        self.batches: _Batches

    # --- metadata ---------------------------------------------------------------------------------
    def _write_meta(self, status: str, **extra: Any) -> None:
        per_step = self.loop_seconds / self.loop_steps if self.loop_steps else None
        self.meta.update(status=status, completed_steps=self.done, losses=self.losses,
                         final_loss=self.losses[-1] if self.losses else None,
                         seconds_per_step=per_step, **extra)
        atomic_write_json(self.files.metadata, self.meta)

    def _base_meta(self, resumed_from: int | None) -> dict[str, Any]:
        c = self.config
        return {
            "job_id": c.job_id,
            "base_model": c.base_model,
            "dataset": self.dataset.summary(),
            "dataset_sha256": self.dataset.sha256,
            "steps": c.steps,
            "hyperparameters": {
                "steps": c.steps, "rank": c.rank, "lora_alpha": c.rank, "learning_rate": c.learning_rate,
                "lr_scheduler": "constant", "resolution": c.resolution, "batch_size": c.batch_size,
                "checkpoint_every": c.checkpoint_every, "seed": c.seed,
                "init_lora_weights": "gaussian", "target_modules": list(TARGET_MODULES),
                "optimizer": {"name": "AdamW", "betas": list(ADAM_BETAS), "weight_decay": ADAM_WEIGHT_DECAY,
                              "eps": ADAM_EPSILON},
                "max_grad_norm": MAX_GRAD_NORM,
            },
            "fingerprint": self.fingerprint,
            "device": self.device.type,
            "dtype": str(self.weight_dtype).removeprefix("torch."),
            "resumed_from": resumed_from,
            "weights": WEIGHTS_NAME,
            "started_at": utcnow(),
            "finished_at": None,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__},
        }

    # --- the run ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        c = self.config
        started = time.monotonic()
        ckpt_io.remove_partial(self.files.checkpoints)
        resume = ckpt_io.latest_checkpoint(self.files.checkpoints)
        if resume is not None:
            check_fingerprint(c.job_id, f"a checkpoint at step {resume.step}", resume.fingerprint,
                              self.fingerprint)
            self.done = self.saved_step = resume.step
            self.losses = list(resume.losses)
        resumed_from = resume.step if resume is not None else None
        self.meta = self._base_meta(resumed_from)
        self._write_meta("running")
        log.info("training job %s: %s steps %d..%d on %s/%s", c.job_id,
                 "resuming at" if resume else "starting,", self.done + 1, c.steps, self.device.type,
                 self.meta["dtype"], extra={"operation": "training", "job_id": c.job_id,
                                            "resumed_from": resumed_from})
        try:
            self._load(resume)
            del resume  # the optimizer and the LoRA hold their own copies now
            self._loop()
            self._save_weights()
            elapsed = time.monotonic() - started
            # Last: "completed" in the metadata is what marks the weights as final.
            self._write_meta("completed", finished_at=utcnow(), elapsed_seconds=round(elapsed, 3))
        except SoftTimeLimitExceeded:
            raise self._interrupted() from None
        except BaseException as exc:
            with contextlib.suppress(OSError):
                self._write_meta("failed", error=f"{type(exc).__name__}: {exc}", finished_at=utcnow())
            raise
        log.info("training job %s finished: %d steps, final loss %.5f, %.1fs", c.job_id, self.done,
                 self.losses[-1], elapsed, extra={"operation": "training", "job_id": c.job_id})
        return TrainResult(job_id=c.job_id, weights=self.files.weights, metadata=self.files.metadata,
                           steps=self.done, final_loss=self.losses[-1], resumed_from=resumed_from,
                           device=self.device.type, dtype=self.meta["dtype"])

    def _interrupted(self) -> TrainingInterrupted:
        """Save what the soft limit left us (the hard limit follows) and explain how to go on."""
        c = self.config
        if self.ready and self.done > self.saved_step:
            self._checkpoint()
        if self.saved_step:
            where = f"checkpoint saved at step {self.saved_step}"
        else:
            where = "no checkpoint yet, the next delivery starts over"
        message = (f"soft time limit reached at step {self.done}/{c.steps}; {where}; "
                   f"deliver job {c.job_id} again to resume")
        self._write_meta("interrupted", error=message, finished_at=utcnow())
        log.warning("training job %s interrupted: %s", c.job_id, message,
                    extra={"operation": "training", "job_id": c.job_id, "step": self.done})
        return TrainingInterrupted(message)

    def _load(self, resume: ckpt_io.Checkpoint | None) -> None:
        # tqdm bars on stderr would interleave with the worker's JSON log lines.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        c = self.config
        base = c.base_model
        try:
            # safetensors only: a pickled checkpoint from a hub repo could run code in the worker.
            tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
            dtype = self.weight_dtype
            text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder", use_safetensors=True,
                                                         dtype=dtype)
            vae = AutoencoderKL.from_pretrained(base, subfolder="vae", use_safetensors=True,
                                                torch_dtype=dtype)
            unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet", use_safetensors=True,
                                                        torch_dtype=dtype)
            self.scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
        except (OSError, ValueError) as exc:
            raise BaseModelError(f"base_model {base!r} cannot be loaded: {exc}") from None

        for model in (vae, text_encoder, unet):
            model.requires_grad_(False)
        torch.manual_seed(c.seed)  # the gaussian LoRA init draws from the global generator
        unet.add_adapter(LoraConfig(r=c.rank, lora_alpha=c.rank, init_lora_weights="gaussian",
                                    target_modules=list(TARGET_MODULES)))
        if self.weight_dtype != torch.float32:
            cast_training_params(unet, dtype=torch.float32)  # train the LoRA itself in float32
        for model in (vae, text_encoder, unet):
            model.to(self.device)
        if resume is not None:
            result = set_peft_model_state_dict(unet, resume.lora)
            unexpected = list(getattr(result, "unexpected_keys", None) or [])
            if unexpected:
                raise RuntimeError(f"checkpoint {resume.path} does not fit this model: {unexpected[:3]}")
        vae.eval()
        text_encoder.eval()
        unet.train()
        self.params = [p for p in unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=c.learning_rate, betas=ADAM_BETAS,
                                           weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPSILON)
        self.generator = torch.Generator().manual_seed(c.seed)  # noise, timesteps, latent sampling
        if resume is not None:
            self.optimizer.load_state_dict(resume.optimizer)
            self.generator.set_state(resume.rng["generator"])
            torch.set_rng_state(resume.rng["torch"])
            if resume.rng.get("cuda") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(resume.rng["cuda"])
        self.vae, self.text_encoder, self.unet = vae, text_encoder, unet
        self.meta["prediction_type"] = self.scheduler.config.prediction_type
        self.meta["trainable_parameters"] = sum(p.numel() for p in self.params)
        captions = [item.caption for item in self.dataset.items]
        self.input_ids = tokenizer(captions, max_length=tokenizer.model_max_length, padding="max_length",
                                   truncation=True, return_tensors="pt").input_ids
        per_image = 3 * c.resolution * c.resolution * 4
        self.cache = {} if per_image * len(self.dataset.items) <= PIXEL_CACHE_BYTES else None
        self.batches = _Batches(len(self.dataset.items), c.batch_size, c.seed)
        self.ready = True

    def _pixels(self, index: int) -> torch.Tensor:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        pixels = load_pixels(self.dataset.items[index].path, self.config.resolution)
        if self.cache is not None:
            self.cache[index] = pixels
        return pixels

    def _loop(self) -> None:
        c = self.config
        prediction_type = self.scheduler.config.prediction_type
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unsupported prediction_type {prediction_type!r} in the base model's scheduler")
        num_timesteps = self.scheduler.config.num_train_timesteps
        scaling = self.vae.config.scaling_factor
        autocast = (torch.autocast(device_type="cuda", dtype=self.weight_dtype)
                    if self.device.type == "cuda" and self.weight_dtype != torch.float32
                    else contextlib.nullcontext())
        for step in range(self.done + 1, c.steps + 1):
            step_started = time.monotonic()
            indices = self.batches.indices(step)
            pixels = torch.stack([self._pixels(i) for i in indices]).to(self.device, dtype=self.weight_dtype)
            input_ids = self.input_ids[indices].to(self.device)
            with torch.no_grad():
                latents = self.vae.encode(pixels).latent_dist.sample(generator=self.generator) * scaling
                hidden = self.text_encoder(input_ids, return_dict=False)[0]
            # Drawn on the CPU generator: the same numbers on every device, and resumable.
            noise = torch.randn(latents.shape, generator=self.generator).to(self.device, latents.dtype)
            timesteps = torch.randint(0, num_timesteps, (latents.shape[0],), generator=self.generator)
            timesteps = timesteps.to(self.device)
            noisy = self.scheduler.add_noise(latents, noise, timesteps)
            target = (noise if prediction_type == "epsilon"
                      else self.scheduler.get_velocity(latents, noise, timesteps))
            with autocast:
                prediction = self.unet(noisy, timesteps, hidden, return_dict=False)[0]
            loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(self.params, MAX_GRAD_NORM)
            value = float(loss.detach().item())
            if not math.isfinite(value):
                raise TrainingDiverged(f"loss is {value} at step {step}/{c.steps}; lower the learning_rate")
            with soft_limit_deferred():  # the update and its bookkeeping happen together or not at all
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.losses.append(value)
                self.done = step
            self.loop_seconds += time.monotonic() - step_started
            self.loop_steps += 1
            if step % c.checkpoint_every == 0 and step < c.steps:
                self._checkpoint()
            if self.progress is not None:
                self.progress(step, c.steps, value)

    def _rng_state(self) -> dict[str, Any]:
        return {
            "generator": self.generator.get_state(),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def _checkpoint(self) -> None:
        path = ckpt_io.save_checkpoint(
            self.files.checkpoints, step=self.done, losses=list(self.losses), fingerprint=self.fingerprint,
            lora=get_peft_model_state_dict(self.unet), optimizer=self.optimizer.state_dict(),
            rng=self._rng_state(),
        )
        self.saved_step = self.done
        log.info("training job %s: checkpoint %s", self.config.job_id, path,
                 extra={"operation": "training", "job_id": self.config.job_id, "step": self.done})

    def _save_weights(self) -> None:
        """The final LoRA in diffusers' format, as the example saves it, renamed into place."""
        state = convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet))
        state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
        tmp = Path(tempfile.mkdtemp(dir=self.files.dir, prefix=".tmp-weights-"))
        try:
            StableDiffusionPipeline.save_lora_weights(save_directory=tmp, unet_lora_layers=state,
                                                      safe_serialization=True)
            # Readable by the inference pods, which may run as another user on the shared volume.
            os.chmod(tmp / WEIGHTS_NAME, 0o644)
            os.replace(tmp / WEIGHTS_NAME, self.files.weights)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def train_lora(config: TrainConfig, *, data: DataDir, dataset: Dataset | None = None,
               progress: ProgressCallback | None = None) -> TrainResult:
    """Train (or resume, or return the finished result of) the LoRA job ``config.job_id``.

    ``dataset`` may be passed when the caller already validated the manifest. Raises
    ``DatasetError``, ``BaseModelError``, ``JobConflict``, ``JobBusy``, ``TrainingInterrupted``
    (soft time limit; resumable) or ``TrainingDiverged``.
    """
    files = JobFiles(data.training_dir(config.job_id))
    dataset = dataset if dataset is not None else load_manifest(data, config.manifest)
    fingerprint = config.fingerprint(dataset.sha256)
    with job_lock(files, config.job_id):
        finished = completed_result(files, config.job_id, fingerprint)
        if finished is not None:
            log.info("training job %s already finished; returning its weights", config.job_id,
                     extra={"operation": "training", "job_id": config.job_id})
            return finished
        return _Trainer(config, dataset, files, fingerprint, progress).run()
