"""DVC stage `report`: Markdown + HTML report with PNG plots of every stage's figures.

Writes ``artifacts/report`` (report.md, report.html, PNGs), the same PNGs under ``plots/report`` for
``dvc plots show``, and ``metrics/report.json``.
"""

import shutil
import time
from pathlib import Path

from llava_ov.artifacts import ArtifactWriter, write_json
from llava_ov.eval.report import build_report
from llava_ov.params import section

KIND, SCHEMA = "report", 1


def main() -> None:
    cfg = section("report")
    t0 = time.perf_counter()
    with ArtifactWriter("artifacts/report", KIND, SCHEMA, params={"report": cfg}) as w:
        summary = build_report(Path("."), w.dir, cfg["eval_stages"], cfg["train_stages"], cfg["pack_stages"],
                               cfg["timed"], cfg["expect"], cfg["published"])
        w.stats.update(summary)
    plots = Path("plots/report")
    shutil.rmtree(plots, ignore_errors=True)
    plots.mkdir(parents=True)
    for png in sorted(Path("artifacts/report").glob("*.png")):
        shutil.copy(png, plots / png.name)
    write_json("metrics/report.json", {**summary, "seconds": round(time.perf_counter() - t0, 2)})
    print(f"report: {summary}")


if __name__ == "__main__":
    main()
