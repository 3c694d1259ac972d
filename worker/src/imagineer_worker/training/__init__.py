"""LoRA training for the ``training`` queue.

Light modules (no torch; the Celery task and clients import them): ``errors`` (exceptions a
client can rebuild from a task result), ``dataset`` (manifest validation and hash), ``job`` (a
job's directory, fingerprint, lock and result) and ``softlimit`` (deferring the soft time limit).

Heavy modules, imported inside the task body in the prefork child so CUDA is never initialised
in the worker's parent: ``lora`` (the trainer), ``checkpoint`` (resumable state) and ``tiny``
(a tiny random Stable Diffusion pipeline for tests and demos).
"""
