"""DVC stage `balance`: the concept-balanced manifest of the mid-training pool, with a coverage report."""

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from llava_ov.artifacts import ArtifactWriter, open_artifact, write_json  # noqa: E402
from llava_ov.concepts.balance import (concept_counts, coverage, inverse_frequency, metaclip_threshold,  # noqa: E402
                                       tail_share, uniform)
from llava_ov.params import load_params  # noqa: E402

KIND, SCHEMA = "balance", 1


def main() -> None:
    params = load_params()
    cfg = params["balance"]
    t0 = time.perf_counter()
    art = open_artifact("artifacts/concept_index", "concept_index", 1)
    table = pq.read_table(art / "index.parquet")
    sample_ids = table["sample_id"].to_pylist()
    sources = table["source"].to_pylist()
    topk = np.array(table["concepts"].to_pylist(), dtype=np.int64)
    n_concepts = int(art.stats["concepts"])
    unknown = sorted(set(sources) - set(cfg["mix"]))
    if unknown:
        raise ValueError(f"params.yaml balance.mix has no weight for source(s) {unknown}")
    mix = np.array([float(cfg["mix"][s]) for s in sources])
    target = min(int(cfg["target"]), len(sample_ids))
    u = uniform(sample_ids, cfg["seed"])
    if cfg["method"] == "inverse_frequency":
        weight, prob = inverse_frequency(topk, mix, target, n_concepts)
        selected = u < prob
    elif cfg["method"] == "metaclip_threshold":
        selected, prob = metaclip_threshold(topk, mix, target, n_concepts, sample_ids, cfg["seed"])
        weight = prob
    else:
        raise ValueError(f"balance.method must be inverse_frequency or metaclip_threshold, not {cfg['method']!r}")
    random = u < (selected.sum() / len(u)) * np.ones_like(u)  # uniform sample of the same expected size
    counts = concept_counts(topk, n_concepts)
    tail = np.flatnonzero((counts > 0) & (counts <= np.quantile(counts[counts > 0], 0.5)))
    with ArtifactWriter("artifacts/balance", KIND, SCHEMA, params={"balance": cfg},
                        inputs={"concept_index": art}) as w:
        pq.write_table(pa.table({"sample_id": sample_ids, "source": sources, "shard": table["shard"],
                                 "key": table["key"], "concepts": table["concepts"],
                                 "weight": weight.astype(np.float64), "selected": selected}),
                       w.dir / "manifest.parquet", compression="zstd")
        w.stats.update(pool=len(sample_ids), selected=int(selected.sum()))
    metrics = {"pool": len(sample_ids), "selected": int(selected.sum()), "random_selected": int(random.sum()),
               "method": cfg["method"],
               "coverage_before": round(coverage(topk, np.ones(len(u), bool), n_concepts), 5),
               "coverage_after": round(coverage(topk, selected, n_concepts), 5),
               "coverage_random": round(coverage(topk, random, n_concepts), 5),
               "tail_share_before": round(tail_share(topk, np.ones(len(u), bool), tail), 4),
               "tail_share_after": round(tail_share(topk, selected, tail), 4),
               "tail_share_random": round(tail_share(topk, random, tail), 4),
               "seconds": round(time.perf_counter() - t0, 2)}
    write_json("metrics/balance.json", metrics)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, mask in [("before (pool)", np.ones(len(u), bool)), ("uniform random", random),
                       ("after (balanced)", selected)]:
        freq = np.sort(concept_counts(topk[mask], n_concepts))[::-1]
        freq = freq[freq > 0]
        ax.loglog(np.arange(1, len(freq) + 1), freq, label=f"{name}: {len(freq)} concepts")
    ax.set_xlabel("concept rank")
    ax.set_ylabel("images with the concept in their top-k")
    ax.set_title("Concept frequency before / after balancing")
    ax.legend()
    fig.tight_layout()
    fig.savefig("plots/concept_frequency.png", dpi=100, metadata={"Software": None})
    print(f"balance: {metrics}")


if __name__ == "__main__":
    main()
