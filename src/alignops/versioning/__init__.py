"""Reproducibility with DVC: dvc.yaml from the Kedro project, and the lineage a run records."""
