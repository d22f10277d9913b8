"""llava-ov: a reproducible, incremental build of the LLaVA-OneVision-1.5 recipe."""

__version__ = "0.1.0"
