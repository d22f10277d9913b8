"""DVC stage `report`: Markdown + HTML report with PNG plots of every stage's figures.

Writes ``artifacts/report`` (report.md, report.html, PNGs), the same PNGs under ``plots/report`` for
``dvc plots show``, and ``metrics/report.json``.
"""

import shutil
from pathlib import Path

from llava_ov.eval.report import build_report
from llava_ov.stage import stage_run


def main() -> None:
    with stage_run("report") as run:
        cfg = run.params["report"]
        with run.writer(params={"report": cfg}) as w:
            packs = {s: run.path(f"pack_{s}") for s in cfg["pack_stages"]}
            summary = build_report(Path("."), w.dir, cfg["eval_stages"], cfg["train_stages"], packs, cfg["timed"],
                                   cfg["expect"], cfg["published"])
            w.stats.update(summary)
        plots = Path("plots/report")
        shutil.rmtree(plots, ignore_errors=True)
        plots.mkdir(parents=True)
        for png in sorted(run.out.glob("*.png")):
            shutil.copy(png, plots / png.name)
        run.metrics.update(summary)


if __name__ == "__main__":
    main()
