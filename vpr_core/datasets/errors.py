"""The one error every dataset reader raises, in its own module so each reader file can import it."""
from __future__ import annotations


class DatasetError(ValueError):
    """A dataset folder is missing files or its ground truth does not match its images."""
