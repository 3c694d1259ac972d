"""LoRA training for the ``training`` queue.

Importing this package (and ``errors``, ``dataset``, ``job``) is cheap: no torch. The heavy
modules, ``lora`` (the trainer), ``checkpoint`` and ``tiny`` (a tiny test pipeline), import torch,
diffusers, transformers and peft at import time, so the Celery task imports them inside its body,
in the prefork child: CUDA is never initialised in the worker's parent process.
"""
