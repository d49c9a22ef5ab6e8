"""Fixtures for the data tests."""

from __future__ import annotations

import pytest

from tests.data.data_testing import FakeEncoder


@pytest.fixture
def fake_encoder() -> FakeEncoder:
    return FakeEncoder()
