"""Developer tools around the app (not part of the product)."""
