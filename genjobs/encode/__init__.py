"""Encoders: image and video bytes, thumbnails, and facts read back from the encoded files."""
