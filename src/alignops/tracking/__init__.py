"""MLflow: the run's metric logger, model logging, registry and the promotion gate.

The only layer that imports mlflow; training loops get a ``log`` callable from here.
"""
