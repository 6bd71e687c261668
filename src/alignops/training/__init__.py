"""One accelerate training loop per stage (sft, reward, ppo, dpo); ``common`` holds what they
share, the epoch loop of SFT, reward and DPO among it, and ``batching`` their grouped sampler.

Loops take a ``log(metrics, step)`` callable and never talk to MLflow themselves.
"""
