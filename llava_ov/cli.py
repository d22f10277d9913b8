"""The ``llava-ov`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from llava_ov import params as params_mod
from llava_ov import experiments
from llava_ov import remote as remote_mod
from llava_ov.plan import PEAK_FLOPS, compare_published, epochs_for_steps, format_table, stage_cost
from llava_ov.plan_inputs import StageData, built_stage_data, model_shapes, training_setup
from llava_ov.train.policy import STAGES
from llava_ov.verify import verify as verify_artifacts


@click.group()
def main() -> None:
    """llava-ov: a reproducible, incremental build of the LLaVA-OneVision-1.5 recipe."""


@main.command()
@click.argument("name")
def profile(name: str) -> None:
    """Switch params.yaml to profile NAME (tiny, smoke, 4b, 8b); DVC then sees exactly the changed keys."""
    try:
        params_mod.apply_profile(name)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"params.yaml now holds profile {name!r}; run `dvc status` to see what it invalidates")


@main.command("verify")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--digests", is_flag=True, help="also recompute every content digest (reads every byte)")
@click.option("--clean", is_flag=True, help="remove the leftovers whose writer is not running")
def verify_cmd(paths: tuple[Path, ...], digests: bool, clean: bool) -> None:
    """Check artifacts and list what killed stages left beside them (.tmp-*, .old-* folders).

    PATHS are artifact folders or folders of artifacts [default: artifacts/]. Exits 1 if anything is wrong.
    """
    report = verify_artifacts(list(paths) or [params_mod.project_root() / "artifacts"], digests, clean)
    for line in report.ok + report.removed + report.problems:
        click.echo(line)
    if report.problems:
        raise SystemExit(1)


@main.command()
@click.option("--stage", "stages", multiple=True, type=click.Choice(STAGES),
              help="training stage to plan (repeatable; default: all three)")
@click.option("--samples", type=float, help="samples in the stage's data (one --stage; e.g. 85e6)")
@click.option("--text-tokens", type=float, help="mean text tokens per sample, chat template included")
@click.option("--image-tokens", type=float, help="mean image tokens per sample (after the 2x2 merger)")
@click.option("--seq-len", type=int, help="pack length [default: the built packs' capacity, else pack.<stage>.capacity]")
@click.option("--fill", type=float, help="mean pack fill [default: measured on the built packs, else 1.0]")
@click.option("--epochs", type=float, default=1.0, show_default=True, help="passes over the data")
@click.option("--params-steps", is_flag=True, help="cost the run params.yaml configures (train.<stage>.steps "
              "x global batch) instead of --epochs passes")
@click.option("--gpus", type=int, help="accelerators [default: train.common.nproc]")
@click.option("--accelerator", type=click.Choice(sorted(PEAK_FLOPS)), default="a800", show_default=True)
@click.option("--utilisation", "--utilization", "utilisation", type=float, default=0.45, show_default=True,
              help="hardware FLOPs utilisation (the report claims 45% at 8K context)")
@click.option("--recompute/--no-recompute", default=True, show_default=True, help="full activation recompute")
@click.option("--model", help="a model size of the family registry (4b, 8b, 1.7b, tiny) [default: the profile's]")
def plan(stages: tuple[str, ...], samples: float | None, text_tokens: float | None, image_tokens: float | None,
         seq_len: int | None, fill: float | None, epochs: float, params_steps: bool, gpus: int | None,
         accelerator: str, utilisation: float, recompute: bool, model: str | None) -> None:
    """Estimate tokens, steps and GPU-hours per training stage from the data counts and the profile's params.

    On a built project the counts are measured on artifacts/pack_<stage> and artifacts/lengths; on the 4b/8b
    profiles give them, e.g. `llava-ov plan --stage stage1_5 --samples 85e6 --text-tokens 253 --image-tokens 500
    --gpus 128`.
    """
    root = params_mod.project_root()
    params = params_mod.load_params(root)
    stages = stages or STAGES
    given = [v is not None for v in (samples, text_tokens, image_tokens)]
    if any(given) and not all(given):
        raise click.UsageError("--samples, --text-tokens and --image-tokens go together")
    if all(given) and len(stages) != 1:
        raise click.UsageError("--samples/--text-tokens/--image-tokens describe one stage's data: give one --stage")
    try:
        name, lm, vit = model_shapes(params, model)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    gpus = gpus or int(params["train"]["common"]["nproc"])
    costs = []
    for stage in stages:
        if all(given):
            data = StageData(stage=stage, samples=int(samples), text_tokens=text_tokens, image_tokens=image_tokens,
                             seq_len=int(params["pack"][stage]["capacity"]), fill=1.0, origin="given")
        else:
            data = built_stage_data(root, params, stage)
            if data is None:
                raise click.ClickException(
                    f"{stage}: artifacts/pack_{stage} (or artifacts/lengths) is not built: build it "
                    f"(dvc repro pack@{stage}) or give its data with --stage {stage} --samples N --text-tokens T "
                    "--image-tokens I")
        try:
            setup = training_setup(params, stage, gpus)
            length, pack_fill = seq_len or data.seq_len, fill or data.fill
            passes = epochs
            if params_steps:
                passes = epochs_for_steps(setup.steps, setup.global_batch, length, pack_fill, data.samples,
                                          data.text_tokens + data.image_tokens)
            costs.append(stage_cost(
                stage, lm, vit, samples=data.samples, text_tokens=data.text_tokens, image_tokens=data.image_tokens,
                epochs=passes, seq_len=length, fill=pack_fill, global_batch=setup.global_batch, gpus=gpus,
                accelerator=accelerator, utilisation=utilisation, recompute=recompute,
                trainable_vit=setup.trainable == "all", trainable_llm=setup.trainable != "merger"))
        except ValueError as e:
            raise click.ClickException(str(e)) from e
        click.echo(f"{stage}: data from {data.origin}; params: {setup.steps:,} steps of global batch "
                   f"{setup.global_batch:,} ({setup.trainable} trainable)")
    click.echo(f"model {name}: LLM {lm.params / 1e9:.3g}B + ViT {vit.params / 1e9:.3g}B parameters, "
               f"{'full' if recompute else 'no'} activation recompute")
    click.echo(format_table(costs, accelerator, gpus, utilisation))
    for cost in costs:
        if name == "8b" and cost.name == "stage1_5":
            click.echo(compare_published(cost))


@main.command()
@click.option("--metric", "metrics", multiple=True, metavar="FILE:KEY",
              help="metric to show, `*` wildcards allowed, e.g. 'eval_stage2:category.*.mc_accuracy' (repeatable; "
                   "default: balance selection, final losses, eval_stage2 caption loss and accuracies)")
@click.option("--param", "params", multiple=True, metavar="KEY",
              help="param to show even where it does not differ, e.g. 'balance.mix.*' (repeatable)")
@click.option("--workspace", is_flag=True, help="add the workspace as a column")
@click.option("--json", "json_file", type=click.File("r"), help="read `dvc exp show --json` output from this file "
              "('-' for stdin) instead of running it")
def compare(metrics: tuple[str, ...], params: tuple[str, ...], workspace: bool, json_file) -> None:
    """Compare experiments: the params that differ and chosen metrics, one column per commit/experiment.

    Queue a sweep with `dvc exp run --queue -S balance.mix.emoji=2.0 ...`, run it with `dvc exp run --run-all`,
    then `llava-ov compare`.
    """
    try:
        shown = json.load(json_file) if json_file else experiments.exp_show(params_mod.project_root())
    except (RuntimeError, json.JSONDecodeError) as e:
        raise click.ClickException(str(e)) from e
    cols = experiments.columns(shown, workspace=workspace)
    experiments.mark_stale(params_mod.project_root(), cols)
    if not cols:
        raise click.ClickException("no commits or experiments to compare (is this a git repository with commits?)")
    metric_keys = experiments.matched_metrics(cols, metrics or experiments.DEFAULT_METRICS)
    if metrics and not metric_keys:
        raise click.ClickException(f"no metric matches {list(metrics)}; keys look like 'balance:coverage_after'")
    click.echo(experiments.format_comparison(cols, experiments.changed_params(cols, params), metric_keys))


@main.group()
def remote() -> None:
    """DVC remotes: diagnose what `dvc push`/`dvc pull` would hit."""


@remote.command("check")
@click.argument("name", required=False)
@click.option("--read-only", is_flag=True, help="do not write and delete the probe object (pull-only credentials)")
def remote_check(name: str | None, read_only: bool) -> None:
    """Probe remote NAME (default: the default remote) as `dvc push` would: credentials, endpoint, bucket, read and
    write. On failure prints one line naming the remote, the problem and the fix, and exits 1."""
    try:
        lines = remote_mod.check_remote(params_mod.project_root(), name, write=not read_only)
    except remote_mod.RemoteProblem as e:
        raise click.ClickException(str(e)) from e
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
