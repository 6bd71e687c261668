"""Every custom Kedro dataset alignops' catalog uses, in one place.

- ``preferences.PreferenceSourceDataset``: a user's preference files (any supported format);
- ``models.HFModelDataset``, ``models.HFTokenizerDataset``, ``models.CheckpointDirectory``:
  Hugging Face models, tokenizers and a stage's checkpoint folder;
- ``reward_model.RewardModelDataset``: the reward model with its prompt format and normalisation;
- ``data_docs.DataDocsDataset``: Great Expectations Data Docs;
- ``mlflow_artifact.MlflowArtifactDataset``: any dataset, also logged to the run as an artifact.
"""
