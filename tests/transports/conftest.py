"""Transport tests run over every HTTP library installed, not only the one the SDK uses."""

from __future__ import annotations

import pytest

from openai_lb._stacks import HttpStack, installed_stacks


@pytest.fixture(params=installed_stacks(), ids=lambda stack: stack.name)
def stack(request: pytest.FixtureRequest) -> HttpStack:
    chosen: HttpStack = request.param
    return chosen
