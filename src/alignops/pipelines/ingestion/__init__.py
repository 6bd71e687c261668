"""ingestion: user preference files (or the embedded world's rankings) into the canonical table."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
