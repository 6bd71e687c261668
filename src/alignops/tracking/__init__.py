"""MLflow: the run's metric logger, run tags and names, model logging, registry and the gate.

The domain layer that talks to MLflow (the Kedro hook, the artifact dataset and the registry
node use it); training loops never do: they get a ``log`` callable from here.
"""
