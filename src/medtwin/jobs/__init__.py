"""Durable jobs: long work queued in the store, run on Dask, visible from any service worker."""
