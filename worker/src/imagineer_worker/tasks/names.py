"""Every task's registered name, in one place.

The task modules register under these names; the beat schedule, the routes' prefixes and the demo
refer to them without importing the task modules (which a worker of another queue never loads).
"""

from __future__ import annotations

RECORD_DISK_USAGE = "imagineer.maintenance.record_disk_usage"
PURGE_STALE_TRAINING = "imagineer.maintenance.purge_stale_training"
PURGE_STALE_SCRAPES = "imagineer.maintenance.purge_stale_scrapes"
SCRAPE_DATASET = "imagineer.scraping.scrape_dataset"
LABEL_DATASET = "imagineer.labeling.label_dataset"
LABEL_BATCH = "imagineer.labeling.label_batch"
FINALIZE_LABELS = "imagineer.labeling.finalize_labels"
TRAIN_LORA = "imagineer.training.train_lora"
