"""The data path at scale: ingest -> balance -> lengths -> pack (plan + materialise at 8192) -> one loader epoch.

N synthetic samples in the released Mid-Training-85M format (parquet files of ``id``, HF-Image ``image``, ``caption``;
deterministic: small JPEGs of noise, captions of pseudo-words with a long-tailed length) go through the real stage
scripts (``python -m stages.ingest``, ``stages.lengths``, ``stages.pack stage1_5``) in a scratch project on the
engine (Ray, ``--cpus``), and through the loader for one epoch. ``balance`` runs the library's selection on
synthetic concept top-k (zipf-distributed, k = 5): the embedding itself is concept_index's cost
(``bench_concepts.py``). Each step is its own process; its peak RSS is sampled every 0.2 s over the whole process
tree (Ray's raylet and workers included): the sum over processes, and the largest single process.

A second run, ``--image-cost``, pushes realistic 700x560 JPEGs (default 10K) through the same steps and reports
seconds per image.

Usage:
    python benchmarks/bench_data_scale.py --samples 100000 --workdir /tmp/scale
    python benchmarks/bench_data_scale.py --samples 1000000 --workdir /tmp/scale --cpus 2
    python benchmarks/bench_data_scale.py --image-cost 10000 --workdir /tmp/scale
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
PER_FILE = 10_000
CAPACITY = 8192
SHARD_BYTES = 256 * 2**20
STEPS = ("ingest", "balance", "lengths", "pack", "loader")  # balance selects what lengths measures


def _jpeg(rng: np.random.Generator, width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=70)
    return buf.getvalue()


def _words(rng: np.random.Generator, n: int = 4000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "shi", "po", "ve", "dan", "bor", "el", "in", "ost", "ur"]
    return ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(n)]


def generate(folder: Path, samples: int, side: tuple[int, int], seed: int = 0, first_file: int = 0) -> None:
    """``samples`` rows of the released parquet schema under ``folder`` (PER_FILE rows a file, nested folders)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    words = _words(rng)
    zipf = rng.zipf(1.3, 10 * samples) % len(words)
    cursor = 0
    for first in range(first_file * PER_FILE, first_file * PER_FILE + samples, PER_FILE):
        n = min(PER_FILE, first_file * PER_FILE + samples - first)
        lengths = np.clip(rng.lognormal(np.log(150), 0.5, n).astype(int), 20, 1200)  # words per caption
        captions = []
        for length in lengths:
            if cursor + length > len(zipf):
                cursor = 0
            captions.append(" ".join(words[i] for i in zipf[cursor:cursor + length]).capitalize() + ".")
            cursor += length
        images = [{"bytes": _jpeg(rng, *side), "path": f"{first + i:09d}.jpg"} for i in range(n)]
        table = pa.table({"id": [f"{first + i:09d}" for i in range(n)], "image": images, "caption": captions})
        path = folder / f"part-{first // (PER_FILE * 10):03d}" / f"{first // PER_FILE:05d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, row_group_size=1000)


def scratch_project(root: Path, cpus: int, samples: int) -> None:
    """A project of the 4b profile's data settings over ``data/released/mid`` only, with a tokenizer built here."""
    from ruamel.yaml import YAML

    from llava_ov.artifacts import ArtifactWriter
    from llava_ov.params import apply_profile, load_params, read_yaml

    root.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "profiles", root / "profiles", dirs_exist_ok=True)
    apply_profile("4b", root)
    params = read_yaml(root / "params.yaml")
    params["ingest"]["released"] = {"mid": "data/released/mid"}
    params["ingest"]["filters"] = {}
    params["engine"] = {"executor": "ray", "cpus": cpus, "address": None}
    params["lengths"]["pools"] = ["mid"]
    # packed shards of about as many samples as the profile's 2 GB shards of real (~100 KB) images hold: the
    # bench's images are ~10x smaller, so 2 GB would put a whole plan group in one shard and leave one task (and
    # one Ray worker) per group, and the process tree at 100K would hold fewer workers than at 1M
    params["pack"]["stage1_5"]["shard_bytes"] = SHARD_BYTES
    with open(root / "params.yaml", "w") as f:
        YAML().dump(params, f)
    # the tokenizer: a byte-level BPE trained on 20K of the captions (the 4b profile would import Qwen3's)
    import pyarrow.parquet as pq

    from llava_ov.text.tokenizer import train_bpe

    first = sorted((root / "data" / "released" / "mid").rglob("*.parquet"))[0]
    texts = pq.read_table(first, columns=["caption"])["caption"].to_pylist()[:20_000]
    with ArtifactWriter(root / "artifacts" / "tokenizer", "tokenizer", 1) as w:
        train_bpe(texts, 8192).save_pretrained(w.dir)
    assert load_params(root)["engine"]["cpus"] == cpus


def balance_step(root: Path, target_fraction: float = 0.8, keep: bool = False) -> dict:
    """The library's concept-balanced selection over synthetic top-k concepts of every ingested sample.

    ``keep``: samples already in the manifest keep their selection and new ones are all selected, as in a pool
    packed without balancing (what packing alone recomputes when a file is added); otherwise every draw is redone
    with the new counts, as concept balancing does (every probability depends on the global counts).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from llava_ov.artifacts import ArtifactWriter
    from llava_ov.concepts.balance import select
    from llava_ov.concepts.draws import id_hashes
    from llava_ov.concepts.manifest import SourceMix

    index = pq.ParquetFile(root / "artifacts" / "ingest" / "index.parquet")
    n, concepts, batch = index.metadata.num_rows, 500_000, 1 << 16
    id_hash = np.concatenate([id_hashes(b.column(0).to_pylist())  # as concept_index stores it, a batch at a time
                              for b in index.iter_batches(batch_size=batch, columns=["sample_id"])]
                             or [np.empty(0, np.uint64)])
    rng, topk = np.random.default_rng(1), np.empty((n, 5), np.int32)
    for i in range(0, n, batch):  # the synthetic top-k, without an [N, 5] int64 temporary
        topk[i:i + batch] = rng.zipf(1.2, (min(batch, n - i), 5)) % concepts
    sel = select("inverse_frequency", topk, SourceMix(np.zeros(n, np.int32), np.ones(1)), int(n * target_fraction),
                 concepts, id_hash, 0)
    selected = sel.selected
    del sel, topk, id_hash
    if keep:  # matched on sample_id in Arrow: no Python object per sample
        old = pq.read_table(root / "artifacts" / "balance" / "manifest.parquet", columns=["sample_id", "selected"])
        ids = index.read(columns=["sample_id"]).column(0)
        at = pc.index_in(ids, value_set=old.column("sample_id"))
        selected = pc.fill_null(pc.take(old.column("selected"), at), True).to_numpy(zero_copy_only=False)
        del old, ids, at
    schema = pa.schema([("sample_id", pa.string()), ("shard", pa.string()), ("selected", pa.bool_())])
    with ArtifactWriter(root / "artifacts" / "balance", "balance", 1) as w, \
            pq.ParquetWriter(w.dir / "manifest.parquet", schema) as out:
        row = 0
        for b in index.iter_batches(batch_size=batch, columns=["sample_id", "shard"]):
            out.write_table(pa.Table.from_batches([b]).append_column("selected", pa.array(selected[row:row + len(b)]))
                            .cast(schema))
            row += len(b)
    return {"samples": n, "selected": int(np.sum(selected))}


def loader_step(root: Path) -> dict:
    """One epoch of the packed loader over pack@stage1_5, micro-batch 1 (every pack read and collated once)."""
    from transformers import AutoTokenizer

    from llava_ov.artifacts import open_artifact
    from llava_ov.packing.loader import PackedLoader
    from llava_ov.params import load_params
    from llava_ov.text.tokenizer import special_ids
    from llava_ov.vision.image_processing import ImageProcessor

    art = open_artifact(root / "artifacts" / "pack_stage1_5", "pack", 2)
    pad = special_ids(AutoTokenizer.from_pretrained(root / "artifacts" / "tokenizer"))["<|endoftext|>"]
    loader = PackedLoader(art, 1, pad, ImageProcessor(**load_params(root)["image"]))
    tokens = 0
    for _ in range(len(loader.packs)):
        tokens += int((loader.take(1)[0]["input_ids"] != pad).sum())
    return {"packs": len(loader.packs), "tokens": tokens}


def run_step(root: Path, step: str) -> dict:
    """Run one step in its own process; returns seconds and peak RSS (tree sum, largest process)."""
    if step in ("ingest", "lengths"):
        cmd = [sys.executable, "-m", f"stages.{step}"]
    elif step == "pack":
        cmd = [sys.executable, "-m", "stages.pack", "stage1_5"]
    else:
        cmd = [sys.executable, __file__, "--internal-step", step, "--workdir", str(root)]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"tree": 0, "process": 0}
    stop = threading.Event()

    def sample() -> None:
        try:
            top = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.is_set():
            try:
                rss = [p.memory_info().rss for p in [top, *top.children(recursive=True)]]
            except psutil.Error:
                rss = []
            if rss:
                peak["tree"] = max(peak["tree"], sum(rss))
                peak["process"] = max(peak["process"], max(rss))
            stop.wait(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    stop.set()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"step {step} failed ({proc.returncode}):\n{err[-4000:]}")
    result = {"seconds": time.perf_counter() - t0, "rss_tree": peak["tree"], "rss_process": peak["process"]}
    if step in ("balance", "balance-keep", "loader"):
        result |= json.loads(out.strip().splitlines()[-1])
    return result


def measure(root: Path, samples: int, side: tuple[int, int], cpus: int) -> dict[str, dict]:
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    generate(root / "data" / "released" / "mid", samples, side)
    print(f"generated {samples:,} samples in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    scratch_project(root, cpus, samples)
    results = {}
    for step in STEPS:
        results[step] = run_step(root, step)
        print(f"{step}: {results[step]}", file=sys.stderr)
    for step, name in (("ingest", "ingest"), ("lengths", "lengths"), ("pack", "pack_stage1_5")):
        metrics = json.loads((root / "metrics" / f"{name}.json").read_text())
        results[step]["metrics"] = metrics
    return results


def add_one_file(root: Path, side: tuple[int, int], keep_selection: bool) -> str:
    """Add one source file to the built pool and rerun ingest -> balance -> lengths -> pack: what each recomputed."""
    files = len(list((root / "data" / "released" / "mid").rglob("*.parquet")))
    generate(root / "data" / "released" / "mid", PER_FILE, side, seed=1 + files, first_file=files)
    how = "existing samples keep their selection" if keep_selection else "every draw redone (concept balancing)"
    rows = [f"Adding one file of {PER_FILE:,} samples to {files} files ({how}):", "",
            "| step | seconds | recomputed |", "|---|---:|---|"]
    for step in ("ingest", "balance-keep" if keep_selection else "balance", "lengths", "pack"):
        seconds = run_step(root, step)["seconds"]
        name = {"pack": "pack_stage1_5"}.get(step, step)
        m = json.loads((root / "metrics" / f"{name}.json").read_text()) if not step.startswith("balance") else {}
        done = {"ingest": lambda: f"{m['cache']['converted']} of {len(m['files'])} files converted",
                "balance": lambda: "every draw (a few numpy columns)",
                "balance-keep": lambda: "the new file's samples selected, the rest as before",
                "lengths": lambda: f"{m['shards_computed']} of {m['shards']} shards measured",
                "pack": lambda: f"{m['shards_computed']} of {m['shards']} packed shards encoded, "
                                f"{m['plan_groups']} plan groups"}[step]()
        rows.append(f"| {step} | {seconds:.1f} | {done} |")
    return "\n".join(rows)


def table(samples: int, cpus: int, results: dict[str, dict]) -> str:
    rows = [f"N = {samples:,} samples, {cpus} CPU(s)", "",
            "| step | seconds | samples/s | peak RSS, all processes (MB) | peak RSS, largest process (MB) |",
            "|---|---:|---:|---:|---:|"]
    for step in STEPS:
        r = results[step]
        rows.append(f"| {step} | {r['seconds']:.1f} | {samples / r['seconds']:,.0f} | {r['rss_tree'] / 2**20:,.0f} | "
                    f"{r['rss_process'] / 2**20:,.0f} |")
    pack = results["pack"]["metrics"]
    rows.append("")
    rows.append(f"pack@8192: {pack['samples']:,} samples in {pack['packs']:,} packs, fill {pack['fill']}, gap to the "
                f"lower bound {pack['gap']:.5f}, {pack['shards']} shards, {pack['plan_groups']} plan groups")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--image-cost", type=int, default=0, help="samples of 700x560 JPEGs for the per-image run")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--add-file", action="store_true", help="then add one source file and rerun: what is recomputed")
    ap.add_argument("--keep-selection", action="store_true",
                    help="with --add-file: existing samples keep their selection (what packing alone recomputes)")
    ap.add_argument("--add-only", action="store_true", help="add a file to the built --samples workdir, no rebuild")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/llava-ov-scale"))
    ap.add_argument("--internal-step", choices=("balance", "balance-keep", "loader"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.internal_step:
        steps = {"balance": balance_step, "balance-keep": lambda root: balance_step(root, keep=True),
                 "loader": loader_step}
        print(json.dumps(steps[args.internal_step](args.workdir)))
        return
    if args.image_cost:
        n = args.image_cost
        results = measure(args.workdir / "images", n, (700, 560), args.cpus)
        print(f"{n:,} samples of 700x560 JPEGs, {args.cpus} CPU(s)\n")
        print("| step | seconds | ms per image |\n|---|---:|---:|")
        for step in STEPS:
            print(f"| {step} | {results[step]['seconds']:.1f} | {1000 * results[step]['seconds'] / n:.2f} |")
        return
    root = args.workdir / f"n{args.samples}"
    if not args.add_only:
        results = measure(root, args.samples, (112, 84), args.cpus)
        print(table(args.samples, args.cpus, results))
        (args.workdir / f"results-{args.samples}-{args.cpus}cpu.json").write_text(json.dumps(results, default=str))
    if args.add_file or args.add_only:
        print("\n" + add_one_file(root, (112, 84), args.keep_selection))


if __name__ == "__main__":
    main()
