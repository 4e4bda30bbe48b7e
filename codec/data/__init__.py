"""The data stages: embedded corpus, ingest, normalize, validate, and their manifests."""
