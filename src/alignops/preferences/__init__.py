"""Preference data: the canonical schema, formats and ingestion, the Great Expectations gate
with its Data Docs, the split by prompt and the data report."""
