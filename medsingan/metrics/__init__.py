"""Quality metrics: SIFID, diversity, similarity to the source, patch statistics."""
