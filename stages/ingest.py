"""DVC stage `ingest`: the embedded default corpora, or the released datasets converted to one schema (4b/8b)."""

from llava_ov.artifacts import ArtifactWriter, write_json
from llava_ov.data.ingest import ARTIFACT, build_embedded
from llava_ov.data.released import validate_released
from llava_ov.params import load_params, project_root

KIND, SCHEMA = "ingest", 1


def main() -> None:
    params = load_params()
    cfg = params["ingest"]
    with ArtifactWriter(ARTIFACT, KIND, SCHEMA, params={"ingest": cfg, "seed": params["seed"]}) as w:
        if cfg["mode"] == "embedded":
            metrics = build_embedded(cfg, params["seed"], w.dir)
        elif cfg["mode"] == "released":
            metrics = validate_released(cfg, project_root(), w.dir)
        else:
            raise ValueError(f"params.yaml ingest.mode must be 'embedded' or 'released', not {cfg['mode']!r}")
        w.stats.update({k: metrics[k] for k in ("total", "kept", "rejected", "pools")})
    write_json("metrics/ingest.json", metrics)
    print(f"ingest: {metrics['kept']} kept, {metrics['rejected']} rejected, pools {metrics['pools']}, "
          f"{metrics['seconds']} s; digest {w.artifact.digest}")


if __name__ == "__main__":
    main()
