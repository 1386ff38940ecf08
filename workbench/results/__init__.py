"""Runs as data: the run store, and loading runs into pandas."""

from .store import RunStore, RunStoreError, load, load_manifest

__all__ = ["RunStore", "RunStoreError", "load", "load_manifest"]
