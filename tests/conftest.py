import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # tiny models: threads only add overhead, and keep the suite predictable

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar-10-batches-py"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_zoo(tmp_path_factory):
    """Every test sees an empty user zoo and cache ($ANYCOST_HOME) and no $ANYCOST_ZOO: a
    developer's own entries must not leak into tests, nor tests write into them."""
    mp = pytest.MonkeyPatch()
    mp.setenv("ANYCOST_HOME", str(tmp_path_factory.mktemp("anycost_home")))
    mp.delenv("ANYCOST_ZOO", raising=False)
    yield
    mp.undo()


def _git_status() -> str | None:
    import subprocess

    if not (REPO / ".git").exists():
        return None
    r = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO, capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def pytest_sessionstart(session):
    session.config._anycost_git_before = _git_status()


def pytest_sessionfinish(session, exitstatus):
    """The suite must leave a source checkout as it found it (no file written into the
    repository or the package): fail the run if `git status` changed."""
    before, after = getattr(session.config, "_anycost_git_before", None), _git_status()
    if before is not None and after is not None and after != before:
        new = sorted(set(after.splitlines()) - set(before.splitlines()))
        print("\nanycost: the test suite changed the checkout (git status): " + "; ".join(new[:10]))
        if exitstatus == 0:
            session.exitstatus = 1


def write_cifar_batch(path: Path, n: int, seed: int, protocol: int = 2):
    rng = np.random.default_rng(seed)
    d = {"batch_label": f"synthetic {path.name}", "labels": rng.integers(0, 10, n).tolist(),
         "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "filenames": [f"img{i}.png" for i in range(n)]}
    path.write_bytes(pickle.dumps(d, protocol=protocol))


def write_cifar_meta(path: Path):
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    path.write_bytes(pickle.dumps({"num_cases_per_batch": 20, "label_names": names, "num_vis": 3072}, protocol=2))


@pytest.fixture(scope="session")
def cifar_dir(tmp_path_factory) -> Path:
    """A tiny CIFAR-10 folder in the official layout: 5 x 20 training images + 30 test images."""
    root = tmp_path_factory.mktemp("data") / "cifar-10-batches-py"
    root.mkdir()
    for i in range(1, 6):
        write_cifar_batch(root / f"data_batch_{i}", 20, seed=i)
    write_cifar_batch(root / "test_batch", 30, seed=99)
    write_cifar_meta(root / "batches.meta")
    return root


@pytest.fixture(scope="session")
def cifar_test_only(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("testonly") / "cifar-10-batches-py"
    root.mkdir()
    write_cifar_batch(root / "test_batch", 40, seed=7)
    write_cifar_meta(root / "batches.meta")
    return root
