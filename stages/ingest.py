"""DVC stage `ingest`: the embedded default corpora, or the released datasets converted to one schema (4b/8b)."""

import time
from pathlib import Path

from llava_ov.artifacts import ArtifactWriter, write_json
from llava_ov.data.ingest import ARTIFACT, build_embedded
from llava_ov.data.released import check_tracked, validate_released
from llava_ov.engine import Engine
from llava_ov.params import load_params, project_root

KIND, SCHEMA = "ingest", 1


def main() -> None:
    params = load_params()
    cfg = params["ingest"]
    engine = Engine.from_params(params)
    if cfg["mode"] not in ("embedded", "released"):
        raise ValueError(f"params.yaml ingest.mode must be 'embedded' or 'released', not {cfg['mode']!r}")
    with ArtifactWriter(ARTIFACT, KIND, SCHEMA, params={"ingest": cfg, "seed": params["seed"]}) as w:
        t0 = time.perf_counter()
        with engine.session():
            startup = time.perf_counter() - t0
            if cfg["mode"] == "embedded":
                metrics = build_embedded(cfg, params["seed"], w.dir, engine=engine)
            else:
                check_tracked(cfg)
                metrics = validate_released(cfg, project_root(), w.dir, cache=Path("cache/ingest").resolve(),
                                            engine=engine)
        w.stats.update({k: metrics[k] for k in ("total", "kept", "rejected", "pools")})
    metrics["engine"] = {"executor": engine.executor, "startup_seconds": round(startup, 2)}
    write_json("metrics/ingest.json", metrics)
    print(f"ingest: {metrics['kept']} kept, {metrics['rejected']} rejected, pools {metrics['pools']}, "
          f"{metrics['seconds']} s (engine start-up {startup:.1f} s); digest {w.artifact.digest}")


if __name__ == "__main__":
    main()
