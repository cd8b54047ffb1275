"""Renderers: the only modules that import torch and diffusers."""
