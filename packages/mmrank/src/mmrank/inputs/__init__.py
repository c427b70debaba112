"""Inputs: documents and queries (text, image, or both) and safe image loading."""
