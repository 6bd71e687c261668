"""Dataset formats, ingestion, validation and the embedded world."""
