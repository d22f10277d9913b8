"""Concept balancing (MetaCLIP-style curation): vocabulary, image-text encoder, top-k index, balanced sampling."""
