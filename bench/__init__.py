"""Performance benchmark of alignops' training loops against TRL's trainers (see bench/README.md)."""
