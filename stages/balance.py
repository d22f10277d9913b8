"""DVC stage `balance`: the concept-balanced manifest of the mid-training pool, with a coverage report."""

import time
from pathlib import Path

from llava_ov.artifacts import ArtifactWriter, open_artifact, write_json
from llava_ov.concepts.balance import report, select
from llava_ov.concepts.manifest import read_pool, write_manifest
from llava_ov.concepts.plot import plot_concept_frequency
from llava_ov.params import load_params

KIND, SCHEMA = "balance", 1


def main() -> None:
    params = load_params()
    cfg = params["balance"]
    t0 = time.perf_counter()
    art = open_artifact("artifacts/concept_index", "concept_index", 2)
    pool = read_pool(art / "index.parquet")
    n_concepts = int(art.stats["concepts"])
    sel = select(cfg["method"], pool.topk, pool.mix(cfg["mix"]), cfg["target"], n_concepts, pool.id_hash, cfg["seed"])
    with ArtifactWriter("artifacts/balance", KIND, SCHEMA, params={"balance": cfg},
                        inputs={"concept_index": art}) as w:
        write_manifest(art / "index.parquet", w.dir / "manifest.parquet", sel.weight, sel.selected)
        w.stats.update(pool=len(pool.topk), selected=int(sel.selected.sum()))
    metrics = {**report(pool.topk, sel, n_concepts), "method": cfg["method"],
               "seconds": round(time.perf_counter() - t0, 2)}
    write_json("metrics/balance.json", metrics)
    plot_concept_frequency(pool.topk, sel, n_concepts, Path("plots/concept_frequency.png"))
    print(f"balance: {metrics}")


if __name__ == "__main__":
    main()
