import pytest

from intgen.grading_pool import GradingPool


@pytest.fixture(scope="session")
def grader():
    """One grading pool for the session (its workers take a second or two to start)."""
    with GradingPool(workers=1) as pool:
        yield pool
