"""Data: sources that read rows, features that encode them, splits and in-memory batches."""
