import pytest


@pytest.fixture(autouse=True)
def _own_home(tmp_path, monkeypatch):
    """Each zoo test gets an empty $ANYCOST_HOME (user zoo and cache): entries of the machine's
    own user zoo must not leak into the tests, nor the tests' entries into it."""
    monkeypatch.setenv("ANYCOST_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ANYCOST_ZOO", raising=False)
