"""DVC stage `balance`: the concept-balanced manifest of the mid-training pool, with a coverage report."""

from pathlib import Path

from llava_ov.concepts.balance import report, select
from llava_ov.concepts.manifest import read_pool, write_manifest
from llava_ov.concepts.plot import plot_concept_frequency
from llava_ov.stage import stage_run


def main() -> None:
    with stage_run("balance") as run:
        cfg = run.params["balance"]
        art = run.open("concept_index")
        pool = read_pool(art / "index.parquet")
        n_concepts = int(art.stats["concepts"])
        sel = select(cfg["method"], pool.topk, pool.mix(cfg["mix"]), cfg["target"], n_concepts, pool.id_hash,
                     cfg["seed"])
        with run.writer(params={"balance": cfg}, inputs={"concept_index": art}) as w:
            write_manifest(art / "index.parquet", w.dir / "manifest.parquet", sel.weight, sel.selected)
            w.stats.update(pool=len(pool.topk), selected=int(sel.selected.sum()))
        run.metrics.update(report(pool.topk, sel, n_concepts), method=cfg["method"])
        plot_concept_frequency(pool.topk, sel, n_concepts, Path("plots/concept_frequency.png"))


if __name__ == "__main__":
    main()
