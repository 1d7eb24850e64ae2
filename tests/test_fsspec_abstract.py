"""fsspec's own abstract test suite for filesystem implementations, run against
VyreFileSystem, wired as fsspec wires its LocalFileSystem."""
import pytest

pytest.importorskip("fsspec")
abstract = pytest.importorskip("fsspec.tests.abstract")

from vyre_uring.fsspec import VyreFileSystem  # noqa: E402


class VyreFixtures(abstract.AbstractFixtures):
    @pytest.fixture(scope="class")
    @classmethod
    def fs(cls):
        return VyreFileSystem(auto_mkdir=True)

    @pytest.fixture
    def fs_path(self, tmpdir):
        return str(tmpdir)


class TestVyreCopy(abstract.AbstractCopyTests, VyreFixtures):
    pass


class TestVyreGet(abstract.AbstractGetTests, VyreFixtures):
    pass


class TestVyrePut(abstract.AbstractPutTests, VyreFixtures):
    pass


class TestVyreOpen(abstract.AbstractOpenTests, VyreFixtures):
    pass


class TestVyrePipe(abstract.AbstractPipeTests, VyreFixtures):
    pass
