"""The ``llava-ov`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from llava_ov import params as params_mod
from llava_ov.artifacts import digest_dir


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


@main.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False, path_type=Path))
def verify(path: Path) -> None:
    """Recompute an artifact's digest and compare it with its artifact.json."""
    meta_path = path / "artifact.json"
    if not meta_path.exists():
        raise click.ClickException(f"{path} has no artifact.json")
    meta = json.loads(meta_path.read_text())
    actual = digest_dir(path)
    if actual != meta.get("digest"):
        raise click.ClickException(f"{path}: digest {actual} != recorded {meta.get('digest')}")
    click.echo(f"{path}: {meta['kind']} schema {meta['schema']} digest {actual} OK")


if __name__ == "__main__":
    main()
