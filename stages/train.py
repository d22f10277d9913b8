"""DVC stage ``train@<stage>`` (stage1, stage1_5, stage2): one training stage, exported as an HF folder.

``python -m stages.train STAGE --in init=<HF folder> [--in packs=...] [--out ...] [--metrics ...]`` (``dvc.yaml``
gives every path; ``init`` is the previous stage's release) starts its processes the way
:mod:`llava_ov.train.launch` decides, each running the module with the same arguments: in place (one process),
torchrun on this node (``train.common.nproc`` processes), torchrun agents on ``train.nnodes.STAGE``
nodes (c10d rendezvous from the environment), or under Slurm ``srun`` with one agent per node. Every rank trains
(llava_ov.train.trainer) and rank 0 exports the final megatron weights into ``artifacts/train_STAGE`` (kind
``hf_model``, like stage0) and writes ``metrics/train_STAGE.json``. Resumable checkpoints live in
``cache/train_STAGE/`` and per-step DVCLive logs in ``plots/train_STAGE/`` (on a shared filesystem when several
nodes train). ``--dry-run`` prints the launch command for this environment and exits.
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from llava_ov.params import section
from llava_ov.stage import TRAIN_STAGES, contract, open_input, parse_args
from llava_ov.train.launch import Layout, command, render
from llava_ov.train.policy import policy


def layout(stage: str) -> Layout:
    """Processes per node (``train.common.nproc``) and nodes (``train.nnodes.STAGE``) of this stage."""
    params = section("train")
    return Layout(nproc=int(params["common"]["nproc"]), nnodes=int(params["nnodes"][stage]))


def launch(stage: str, cmd: list[str]) -> None:
    """Run the launcher (torchrun or srun) and fail if any rank fails."""
    print(f"train@{stage}: {render(cmd)}", file=sys.stderr, flush=True)
    result = subprocess.run(cmd)
    if result.returncode:
        raise SystemExit(f"train@{stage}: {cmd[0] if cmd[0] == 'srun' else 'torchrun'} exited with "
                         f"{result.returncode}")


def run_stage(args: argparse.Namespace) -> None:
    """Train on this rank (imports megatron here, so the launching process stays light)."""
    import torch.distributed as dist

    from llava_ov.artifacts import ArtifactWriter, write_json
    from llava_ov.train.distributed import shutdown
    from llava_ov.train.export import gather_shards, save_hf
    from llava_ov.train.trainer import Run, train

    start = time.perf_counter()
    stage = args.variant
    out = contract(f"train_{stage}")
    inputs = dict(item.split("=", 1) for item in args.inputs)
    if "init" not in inputs:
        raise SystemExit(f"train@{stage}: give the checkpoint it starts from with --in init=PATH (dvc.yaml does)")
    params, seed = section("train"), section("seed")
    common = params["common"]
    pol = policy(stage, params, seed)
    init = open_input(inputs["init"], "hf_model")
    packs = open_input(inputs.get("packs", contract(f"pack_{stage}").path), "pack")
    run = Run.from_params(common, checkpoints=Path(f"cache/train_{stage}"), live_dir=Path(f"plots/train_{stage}"))
    identity = {"init": init.digest, "packs": packs.digest, "policy": pol.as_dict(),
                **{k: common[k] for k in ("nproc", "tp", "pp", "threads")}, "nnodes": layout(stage).nnodes,
                "run": {k: getattr(run, k) for k in ("cp", "sequence_parallel", "dtype", "recompute")}}
    result = train(pol, run, init.path, packs, identity)
    shards = gather_shards(result.model, run.checkpoints / "export")
    if dist.get_rank() == 0:
        used = {"train": {"common": common, "nnodes": {stage: params["nnodes"][stage]}, stage: params[stage]},
                "seed": seed}
        with ArtifactWriter(args.out or out.path, out.kind, out.schema, params=used,
                            inputs={"init": init, "packs": packs}) as w:
            save_hf(shards, result.hf_config, run.tp, run.pp, init.path, w.dir, te=result.model.te_names)
            w.stats.update({k: result.metrics[k] for k in ("steps", "tokens", "final_loss", "logit_max_abs_diff")})
        # seconds: this rank's wall time for the whole stage (conversion + check + training + export), the key every
        # stage's metrics share; train_seconds sums the training steps' times over every run that resumed into this one
        metrics = {**result.metrics, "seconds": round(time.perf_counter() - start, 2)}
        write_json(args.metrics or out.metrics, metrics)
        print(f"train@{stage}: {metrics}")
    shutdown()


def main() -> None:
    argv = sys.argv[1:]
    dry = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    args = parse_args(argv, TRAIN_STAGES)
    if args.rest:
        raise SystemExit(f"python -m stages.train: unknown arguments {args.rest}")
    stage = args.variant
    cmd = command(stage, layout(stage), os.environ, argv)
    if dry:
        print(render(cmd) if cmd else f"train@{stage}: trains in this process (one process, one node)")
    elif cmd is None:
        run_stage(args)
    else:
        launch(stage, cmd)


if __name__ == "__main__":
    main()
