"""Training data: prompt lists, image-caption datasets, and the deterministic batch source built on them."""

from distillkit.data.images import ImageTextDataset, item_seed, prepare_image
from distillkit.data.loader import BatchSource
from distillkit.data.prompts import load_prompts

__all__ = ["BatchSource", "ImageTextDataset", "item_seed", "load_prompts", "prepare_image"]
