"""data_validation: the Great Expectations gate between ingestion and training."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
