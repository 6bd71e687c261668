"""audit_judge: a reward model on the audit split (or a pretrained classifier) that judges the policies."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
