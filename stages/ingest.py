"""DVC stage `ingest`: the embedded default corpora, or the released datasets converted to one schema (4b/8b)."""

import time
from pathlib import Path

from llava_ov.data.ingest import build_embedded
from llava_ov.data.released import check_tracked, validate_released
from llava_ov.engine import Engine
from llava_ov.params import project_root
from llava_ov.stage import stage_run


def main() -> None:
    with stage_run("ingest") as run:
        cfg, seed = run.params["ingest"], run.params["seed"]
        engine = Engine.from_params(run.params)
        if cfg["mode"] not in ("embedded", "released"):
            raise ValueError(f"params.yaml ingest.mode must be 'embedded' or 'released', not {cfg['mode']!r}")
        with run.writer(params={"ingest": cfg, "seed": seed}) as w:
            t0 = time.perf_counter()
            with engine.session():
                startup = time.perf_counter() - t0
                if cfg["mode"] == "embedded":
                    metrics = build_embedded(cfg, seed, w.dir, engine=engine)
                else:
                    check_tracked(cfg)
                    metrics = validate_released(cfg, project_root(), w.dir, cache=Path("cache/ingest").resolve(),
                                                engine=engine)
            w.stats.update({k: metrics[k] for k in ("total", "kept", "rejected", "pools")})
        run.metrics.update(metrics, engine={"executor": engine.executor, "startup_seconds": round(startup, 2)},
                           digest=w.artifact.digest)


if __name__ == "__main__":
    main()
