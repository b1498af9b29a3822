"""One router per resource: health, datasets, jobs, artifacts, models."""
