"""The shard-parallel data path on a 2-node Ray cluster (simulated on this machine, ``ray.cluster_utils.Cluster``):
the smoke profile's ``ingest`` stage joins it through ``RAY_ADDRESS`` and the ``lengths`` map through
``engine.address``; both give the bytes of the one-process run."""

from __future__ import annotations

import subprocess
import sys

import pytest
import ray
import yaml

from llava_ov.artifacts import ArtifactWriter, digest_file, open_artifact
from llava_ov.data.ingest import build_embedded
from llava_ov.data.reader import open_ingest
from llava_ov.engine import Engine
from llava_ov.packing.lengths import shard_jobs, shard_lengths, write_lengths
from tests.project import copy_project, env, run

POOLS = ("align", "mid", "instruct")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    two = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    two.add_node(num_cpus=1)
    two.wait_for_nodes()
    yield two
    two.shutdown()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, cluster):
    """A smoke-profile project copy whose ``ingest`` stage ran on the cluster, and its ``tokenizer`` (local)."""
    root = copy_project(tmp_path_factory.mktemp("cluster") / "project")
    run(["llava-ov", "profile", "smoke"], root)
    subprocess.run([sys.executable, "-m", "stages.ingest"], cwd=root, env={**env(), "RAY_ADDRESS": cluster.address},
                   check=True, capture_output=True)
    run([sys.executable, "-m", "stages.tokenizer"], root)
    return root


def node_id(_: int) -> str:
    import time

    time.sleep(0.5)  # long enough that one node cannot take every task
    return ray.get_runtime_context().get_node_id()


def test_the_ingest_stage_on_two_nodes_equals_the_local_build(smoke, tmp_path):
    params = yaml.safe_load((smoke / "params.yaml").read_text())
    metrics = yaml.safe_load((smoke / "metrics" / "ingest.json").read_text())
    assert metrics["engine"]["executor"] == "ray"
    with ArtifactWriter(tmp_path / "local", "ingest", 1) as w:
        build_embedded(params["ingest"], params["seed"], w.dir, engine=Engine(executor="local"))
    assert open_ingest(smoke / "artifacts" / "ingest").digest == w.artifact.digest


def test_the_lengths_map_on_two_nodes_equals_the_local_map(smoke, cluster, tmp_path):
    image = yaml.safe_load((smoke / "params.yaml").read_text())["image"]
    ingest = open_ingest(smoke / "artifacts" / "ingest")
    tokenizer = open_artifact(smoke / "artifacts" / "tokenizer", "tokenizer", 1)
    engine = Engine(executor="ray", address=cluster.address)
    with engine.session():
        assert len({n["NodeID"] for n in ray.nodes() if n["Alive"]}) == 2
        assert len(set(engine.map(node_id, list(range(4)), desc="nodes"))) == 2  # tasks run on both nodes
        on_cluster = engine.map(shard_lengths, shard_jobs(ingest, tokenizer, image, POOLS, tmp_path / "cache-2n"),
                                desc="lengths")
    local = Engine(executor="local").map(shard_lengths, shard_jobs(ingest, tokenizer, image, POOLS,
                                                                   tmp_path / "cache-local"), desc="lengths")
    assert len(on_cluster) == len(local) >= len(POOLS)
    stats = [write_lengths(parts, tmp_path / f"{name}.parquet") for name, parts in (("2n", on_cluster),
                                                                                     ("local", local))]
    assert stats[0] == stats[1] and stats[0]["samples"] > 0
    assert digest_file(tmp_path / "2n.parquet") == digest_file(tmp_path / "local.parquet")
