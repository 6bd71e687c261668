"""sources: a user's SFT demonstrations and evaluation prompts, from their files or their preferences."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
