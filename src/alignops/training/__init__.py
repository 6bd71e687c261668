"""One accelerate training loop per stage (sft, reward, ppo, dpo); what they share is in
``common`` (the epoch loop of SFT, reward and DPO, guards, metric history), ``accelerator``
(precision, DeepSpeed, FSDP), ``optim`` (optimiser, schedules), ``ranks`` (each rank's share
of the batches) and ``batching`` (their grouped sampler).

Loops take a ``log(metrics, step)`` callable and never talk to MLflow themselves.
"""
