"""What the sdist and the installed wheel carry: the sdist can build and test the
package (the whole suite, conftest.py included) but holds no generated C; the wheel
holds the compiled module, its types and the cimport declarations, not the build
inputs."""
import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The package's sources, by the suffixes that build or ship it; the generated C and
# build outputs are not sources.
SOURCE_SUFFIXES = {".py", ".pyx", ".pxi", ".pxd", ".h", ".pyi", ".c", ".typed"}
NEVER_SHIPPED = ("vyre_uring/_ring.c", "vyre_uring/_engine.c")


def _sources():
    """The package's and the tests' files in this tree, relative to its root."""
    found = {p.relative_to(ROOT).as_posix()
             for top in ("vyre_uring", "tests") for p in (ROOT / top).rglob("*")
             if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts}
    return found - set(NEVER_SHIPPED)


@pytest.fixture(scope="module")
def sdist_names(tmp_path_factory):
    pytest.importorskip("build", reason="building an sdist needs 'build' (pip install build)")
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip(f"no source tree at {ROOT}: the tests run from an installed copy")
    # A copy, so that the build writes nothing into the tree under test.
    tree = tmp_path_factory.mktemp("tree") / "src"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(
        ".git", "build", "dist", "*.egg-info", "__pycache__", "*.so", "_ring.c", "_engine.c",
        ".pytest_cache", ".hypothesis", ".venv"))
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(out),
                        str(tree)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        return {n[len(top) + 1:] for n in tar.getnames() if n != top}


def test_sdist_holds_every_source_and_test_and_the_documents(sdist_names):
    missing = _sources() - sdist_names
    assert not missing
    for name in ("LICENSE", "README.md", "SECURITY.md", "pyproject.toml", "setup.py",
                 "tests/conftest.py", "tests/soak.py", "bench/README.md"):
        assert name in sdist_names


def test_sdist_holds_no_generated_c_or_binaries(sdist_names):
    assert not [n for n in sdist_names
                if n in NEVER_SHIPPED or n.endswith((".so", ".pyc")) or "__pycache__" in n]


def test_installed_wheel_holds_the_module_types_and_declarations_not_build_inputs():
    dist = importlib.metadata.distribution("vyre-uring")
    # A wheel's install has a RECORD listing the package; an editable install's lists
    # only its import hook, and a checkout's egg-info has none.
    files = {f.as_posix() for f in dist.files or []} if dist.read_text("RECORD") else set()
    if "vyre_uring/__init__.py" not in files:
        pytest.skip("not installed from a wheel (an editable install, or a checkout)")
    for name in ("vyre_uring/py.typed", "vyre_uring/_ring.pyi", "vyre_uring/_engine.pyi",
                 "vyre_uring/_typing.pyi", "vyre_uring/includes/kernel.pxd",
                 "vyre_uring/includes/uring_abi.h", "vyre_uring/includes/counters.h"):
        assert name in files
    # The internal C API between the two extensions is not for cimport users.
    for name in ("vyre_uring/_ring.pxd", "vyre_uring/_queues.pxd",
                 "vyre_uring/includes/process.h", "vyre_uring/includes/process.pxd"):
        assert name not in files
    for module in ("_ring", "_engine"):
        assert [f for f in files if f.startswith(f"vyre_uring/{module}.") and f.endswith(".so")]
    assert not [f for f in files if f.endswith((".pyx", ".pxi")) or f in NEVER_SHIPPED]
