"""DVC stage ``train@<stage>`` (stage1, stage1_5, stage2): one training stage, exported as an HF folder.

``python -m stages.train STAGE`` relaunches itself under torchrun with ``train.common.nproc`` processes (with one
process it trains in place, sparing the launcher's start-up); every
rank trains (llava_ov.train.trainer) and rank 0 exports the final megatron weights into ``artifacts/train_STAGE``
(kind ``hf_model``, like stage0) and writes ``metrics/train_STAGE.json``. Resumable checkpoints live in
``cache/train_STAGE/`` and per-step DVCLive logs in ``plots/train_STAGE/``.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

from llava_ov.params import section
from llava_ov.train.policy import STAGES, policy

KIND, SCHEMA = "hf_model", 1


def launch(stage: str, nproc: int) -> None:
    """Run this module under torchrun (one node, ``nproc`` processes) and fail if any rank fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "stages.train", stage]
    result = subprocess.run(cmd)
    if result.returncode:
        raise SystemExit(f"train@{stage}: torchrun exited with {result.returncode}")


def run_stage(stage: str) -> None:
    """Train on this rank (imports megatron here, so the launching process stays light)."""
    import torch.distributed as dist

    from llava_ov.artifacts import ArtifactWriter, open_artifact, write_json
    from llava_ov.train.distributed import shutdown
    from llava_ov.train.export import gather_shards, save_hf
    from llava_ov.train.trainer import Run, train

    start = time.perf_counter()
    params, seed = section("train"), section("seed")
    common = params["common"]
    pol = policy(stage, params, seed)
    init = open_artifact(pol.init_artifact, KIND, SCHEMA)
    packs = open_artifact(pol.pool_artifact, "pack", 2)
    identity = {"init": init.digest, "packs": packs.digest, "policy": pol.as_dict(),
                **{k: common[k] for k in ("nproc", "tp", "pp", "threads")}}
    run = Run(tp=int(common["tp"]), pp=int(common["pp"]), threads=int(common["threads"]),
              save_every=int(common["save_every"]), logit_tolerance=float(common["logit_tolerance"]),
              checkpoints=Path(f"cache/train_{stage}"), live_dir=Path(f"plots/train_{stage}"))
    result = train(pol, run, init.path, packs, identity)
    shards = gather_shards(result.model, run.checkpoints / "export")
    if dist.get_rank() == 0:
        used = {"train": {"common": common, stage: params[stage]}, "seed": seed}
        with ArtifactWriter(f"artifacts/train_{stage}", KIND, SCHEMA, params=used,
                            inputs={"init": init, "packs": packs}) as w:
            save_hf(shards, result.hf_config, run.tp, run.pp, init.path, w.dir)
            w.stats.update({k: result.metrics[k] for k in ("steps", "tokens", "final_loss", "logit_max_abs_diff")})
        # seconds: this rank's wall time for the whole stage (conversion + check + training + export), the key every
        # stage's metrics share; train_seconds sums the training steps' times over every run that resumed into this one
        metrics = {**result.metrics, "seconds": round(time.perf_counter() - start, 2)}
        write_json(f"metrics/train_{stage}.json", metrics)
        print(f"train@{stage}: {metrics}")
    shutdown()


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in STAGES:
        raise SystemExit(f"usage: python -m stages.train {{{','.join(STAGES)}}}")
    stage = sys.argv[1]
    nproc = int(section("train")["common"]["nproc"])
    if "LOCAL_RANK" in os.environ or nproc == 1:  # one process needs no launcher: it forms a one-rank group
        run_stage(stage)
    else:
        launch(stage, nproc)


if __name__ == "__main__":
    main()
