"""Strict pydicom validation for every encoder test, restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pydicom.config
import pytest


@pytest.fixture(autouse=True)
def strict_validation() -> Iterator[None]:
    """Raise on any invalid value read or written, as highdicom's own tests do."""
    settings = pydicom.config.settings
    reading, writing = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    settings.writing_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        settings.reading_validation_mode = reading
        settings.writing_validation_mode = writing
