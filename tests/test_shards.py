"""Webdataset shard writing is byte-deterministic and reading is safe."""

import io
import json
import tarfile

import pytest

from llava_ov.data.shards import ShardError, ShardWriter, read_shard, sample_id


def _write(directory, n=3, max_bytes=1 << 30):
    with ShardWriter(directory, "pool", max_bytes=max_bytes) as w:
        for i in range(n):
            w.write(f"s{i:03d}", {"json": json.dumps({"i": i}).encode(), "0.png": b"P" * 100, "1.png": b"Q"})
    return w


def test_deterministic_bytes(tmp_path):
    a = _write(tmp_path / "a")
    b = _write(tmp_path / "b")
    assert a.shards[0].read_bytes() == b.shards[0].read_bytes()


def test_roundtrip_groups_by_key(tmp_path):
    w = _write(tmp_path)
    samples = list(read_shard(w.shards[0]))
    assert [s.key for s in samples] == ["s000", "s001", "s002"]
    assert samples[1].files == {"json": b'{"i": 1}', "0.png": b"P" * 100, "1.png": b"Q"}
    assert all(s.error is None for s in samples)


def test_rolls_over_at_max_bytes(tmp_path):
    w = _write(tmp_path, n=10, max_bytes=5000)
    assert len(w.shards) > 1 and sum(w.counts) == 10
    assert sum(len(list(read_shard(p))) for p in w.shards) == 10


def test_truncated_tar_is_a_clear_error(tmp_path):
    w = _write(tmp_path)
    data = w.shards[0].read_bytes()
    w.shards[0].write_bytes(data[: len(data) // 2 + 7])
    with pytest.raises(ShardError, match=str(w.shards[0].name)):
        list(read_shard(w.shards[0]))


@pytest.mark.parametrize("bad", ["/etc/evil.json", "../evil.json", "a/../../evil.json"])
def test_unsafe_member_is_rejected(tmp_path, bad):
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("ok.json", b"{}"), (bad, b"{}")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    samples = list(read_shard(path))
    assert samples[0].error is None
    assert samples[1].error is not None and "unsafe tar member" in samples[1].error
    assert not (tmp_path.parent / "evil.json").exists()


def test_sample_id_depends_on_images_and_text():
    base = sample_id([b"img"], "text")
    assert len(base) == 16
    assert base == sample_id([b"img"], "text")
    assert base != sample_id([b"img2"], "text")
    assert base != sample_id([b"img"], "text2")
    assert sample_id([b"ab", b"c"], "") != sample_id([b"a", b"bc"], "")


def test_each_sample_reads_back_alone_at_its_recorded_offset(tmp_path):
    from llava_ov.data.shards import ShardError, read_sample_at, read_shard

    with ShardWriter(tmp_path, "s") as w:
        written = [w.write(f"k{i}", {"json": b'{"i": %d}' % i, "0.png": bytes(range(i * 100 % 256)) * (i + 1)})
                   for i in range(5)]
    path = w.shards[0]
    samples = list(read_shard(path))
    assert [(x.shard, x.offset, x.size) for x in written] == [(path.name, s.offset, s.size) for s in samples]
    for raw in samples:
        again = read_sample_at(path, raw.offset, raw.size, raw.key)
        assert again.files == raw.files and again.key == raw.key
    first, second = samples[0], samples[1]
    assert second.offset == first.offset + first.size  # contiguous extents
    with pytest.raises(ShardError, match="not sample 'k0'"):
        read_sample_at(path, second.offset, second.size, "k0")
    with pytest.raises(ShardError, match="no sample at bytes"):
        read_sample_at(path, path.stat().st_size - 512, 4096, "k4")
