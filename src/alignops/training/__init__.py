"""One accelerate training loop per stage (sft, reward, ppo, dpo) and what they share (``common``).

Loops take a ``log(metrics, step)`` callable and never talk to MLflow themselves.
"""
