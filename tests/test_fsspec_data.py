"""pandas, pyarrow and Dask (on a real 2-worker LocalCluster) reading vyre:// URLs
give what they give for file:// ones."""
import os

import pytest

fsspec = pytest.importorskip("fsspec")
pd = pytest.importorskip("pandas")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from vyre_uring.fsspec import VyreFileSystem  # noqa: E402

CLUSTER_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    frame = pd.DataFrame({"a": range(20_000), "b": [f"s{i % 97}" for i in range(20_000)],
                          "c": [i * 0.5 for i in range(20_000)]})
    pq.write_table(pa.Table.from_pandas(frame), root / "t.parquet", row_group_size=3000)
    os.mkdir(root / "csv")
    os.mkdir(root / "pq")
    for k in range(4):
        part = frame.iloc[k * 5000:(k + 1) * 5000]
        part.to_csv(root / "csv" / f"p{k}.csv", index=False)
        part.to_parquet(root / "pq" / f"p{k}.parquet")
    return root


def test_pandas_read_parquet(data_dir):
    path = f"{data_dir}/t.parquet"
    pd.testing.assert_frame_equal(pd.read_parquet(f"vyre://{path}"),
                                  pd.read_parquet(f"file://{path}"))


def test_pyarrow_through_fsspec_handler(data_dir):
    from pyarrow.fs import FSSpecHandler, PyFileSystem
    path = f"{data_dir}/t.parquet"
    ours = pq.read_table(path, filesystem=PyFileSystem(FSSpecHandler(VyreFileSystem())),
                         columns=["a", "c"])
    assert ours.equals(pq.read_table(path, columns=["a", "c"]))


def test_open_parquet_file_prefetches_through_cat_ranges(data_dir):
    from fsspec.parquet import open_parquet_file
    path = f"{data_dir}/t.parquet"
    tables = []
    for fs in (VyreFileSystem(), fsspec.filesystem("file")):
        with open_parquet_file(path, fs=fs, columns=["b"], engine="pyarrow") as f:
            tables.append(pq.read_table(f, columns=["b"]))
    assert tables[0].equals(tables[1])
    assert tables[0].num_rows == 20_000


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("dask.dataframe")
    # LocalCluster sets its workers' environment in this process's own
    # (MALLOC_TRIM_THRESHOLD_, PYTHONHASHSEED...), where later tests' children
    # would inherit it: put it back after.
    environ = dict(os.environ)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=None, timeout=CLUSTER_TIMEOUT_S)
    try:
        c = distributed.Client(cluster, timeout=CLUSTER_TIMEOUT_S)
        try:
            yield c
        finally:
            c.close(timeout=CLUSTER_TIMEOUT_S)
    finally:
        cluster.close(timeout=CLUSTER_TIMEOUT_S)
        os.environ.clear()
        os.environ.update(environ)


def both(fn, url):
    """fn computed on vyre:// and on file:// URLs of the same path."""
    return fn(f"vyre://{url}"), fn(f"file://{url}")


def test_dask_read_bytes(client, data_dir):
    from dask.bytes import read_bytes

    def run(url):
        _, blocks = read_bytes(url, blocksize=20_000, delimiter=b"\n")
        return client.compute([b for file_blocks in blocks for b in file_blocks], sync=True)
    ours, theirs = both(run, f"{data_dir}/csv/*.csv")
    assert ours == theirs and len(ours) > 4


def test_dask_bag_read_text(client, data_dir):
    import dask.bag as db
    ours, theirs = both(lambda u: db.read_text(u, blocksize=30_000).compute(),
                        f"{data_dir}/csv/*.csv")
    assert ours == theirs and len(ours) == 20_004


def test_dask_dataframe_read_csv_and_parquet(client, data_dir):
    import dask.dataframe as dd
    ours, theirs = both(lambda u: dd.read_csv(u, blocksize=40_000).compute(),
                        f"{data_dir}/csv/*.csv")
    pd.testing.assert_frame_equal(ours, theirs)
    ours, theirs = both(lambda u: dd.read_parquet(u).compute(), f"{data_dir}/pq")
    pd.testing.assert_frame_equal(ours, theirs)
    assert len(ours) == 20_000


def test_workers_read_with_their_own_reader(client, data_dir):
    """Each worker process reads through a reader of its own (made there, not
    inherited), with its pid."""
    def probe(path):
        from vyre_uring import reader
        VyreFileSystem().cat_file(path, 0, 10)
        return os.getpid(), [r._pid for r in reader._shared.values()]
    pids = set()
    for worker in client.scheduler_info()["workers"]:
        pid, owners = client.submit(probe, f"{data_dir}/t.parquet", workers=[worker],
                                    pure=False).result(timeout=CLUSTER_TIMEOUT_S)
        assert owners and set(owners) == {pid}
        pids.add(pid)
    assert len(pids) == 2 and os.getpid() not in pids
