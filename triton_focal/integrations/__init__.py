"""Adapters to training frameworks; each is an optional extra (``transformers``: ``[hf]``)."""
