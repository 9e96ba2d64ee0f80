"""The stream worker: a Faust app whose hot path is the batched pipeline in ``pipeline.py``."""
