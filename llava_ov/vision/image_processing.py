"""Image → ViT patches, shared by the lengths stage, the packed loader, the model's processor and evaluation.

Qwen2-VL's resize rule (``smart_resize``) keeps each side a multiple of patch × merge (28) and the pixel count in
``[min_pixels, max_pixels]``; patches are emitted in 2×2-window order (the four patches of one merger window are
consecutive rows), so the merger can concatenate neighbours with a reshape.
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "preprocessor_config.json"
MAX_ASPECT_RATIO = 200  # Qwen2-VL's limit: a longer side more than 200x the shorter cannot be resized


_strict_lock = threading.Lock()
_strict_sections = 0  # strict sections open in this process (threads of a preprocessing pool overlap)
_flag_outside = False  # the flag as it was before the first of them opened


@contextmanager
def strict_decoding() -> Iterator[None]:
    """Pillow pads a truncated file with grey and says nothing when ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set, a
    process-wide flag other libraries set on import (lmms-eval does): every decode of a sample's bytes (validation,
    the concept encoder, the packed loader) is strict whatever the flag is. Sections may overlap across threads:
    the flag stays off until the last one closes, and only then is the outside value restored."""
    global _strict_sections, _flag_outside
    with _strict_lock:
        if _strict_sections == 0:
            _flag_outside = ImageFile.LOAD_TRUNCATED_IMAGES
        _strict_sections += 1
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        with _strict_lock:
            _strict_sections -= 1
            if _strict_sections == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _flag_outside


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, aspect ratio kept, pixels within [min, max]."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"image aspect ratio {max(height, width) / min(height, width):.0f} exceeds "
                         f"{MAX_ASPECT_RATIO}")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


@dataclass(frozen=True)
class ImageProcessor:
    """The image half of the processor; saved as ``preprocessor_config.json`` next to a checkpoint."""

    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = 3136
    max_pixels: int = 2_560_000
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def grid(self, width: int, height: int) -> tuple[int, int, int]:
        """(t, h, w) in patches for an image of the given size, without decoding it."""
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return 1, h // self.patch_size, w // self.patch_size

    def num_image_tokens(self, grid: tuple[int, int, int]) -> int:
        t, h, w = grid
        return t * h * w // (self.merge_size ** 2)

    def __call__(self, image: Image.Image | bytes) -> tuple[np.ndarray, tuple[int, int, int]]:
        """``pixel_values`` float32 [h·w, 3·p·p] in 2×2-window order, and the grid (1, h, w)."""
        if isinstance(image, (bytes, bytearray)):
            with strict_decoding(), Image.open(io.BytesIO(image)) as img:
                image = to_rgb(img)
        else:
            image = to_rgb(image)
        t, gh, gw = self.grid(image.width, image.height)
        p, m = self.patch_size, self.merge_size
        resized = image.resize((gw * p, gh * p), Image.BICUBIC)
        x = np.asarray(resized, dtype=np.float32) / 255.0
        x = (x - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        x = x.transpose(2, 0, 1)  # C, H, W
        x = x.reshape(3, gh // m, m, p, gw // m, m, p)
        x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # window y, window x, dy, dx, C, py, px
        return np.ascontiguousarray(x.reshape(gh * gw, 3 * p * p)), (t, gh, gw)

    def save(self, folder: Path | str) -> None:
        """Write ``preprocessor_config.json`` as transformers' ``Qwen2VLImageProcessor`` reads it (the released
        folders' processor, ``temporal_patch_size`` 1): both transformers 4.x (``min_pixels``/``max_pixels``) and
        5.x (``size``) keys, so the published code and lmms-eval preprocess exactly as this class does."""
        d = {"image_processor_type": "Qwen2VLImageProcessor", "do_convert_rgb": True, "do_resize": True,
             "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
             "image_mean": list(self.image_mean), "image_std": list(self.image_std), "patch_size": self.patch_size,
             "merge_size": self.merge_size, "temporal_patch_size": 1, "min_pixels": self.min_pixels,
             "max_pixels": self.max_pixels, "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}}
        (Path(folder) / CONFIG_NAME).write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path | str) -> "ImageProcessor":
        """Read a ``Qwen2VLImageProcessor`` config (released folders, this project's) into this class."""
        path = Path(folder) / CONFIG_NAME
        d = json.loads(path.read_text())
        size = d.get("size") or {}
        d.setdefault("min_pixels", size.get("shortest_edge"))
        d.setdefault("max_pixels", size.get("longest_edge"))
        if d.get("temporal_patch_size", 1) != 1:
            raise ValueError(f"{path}: temporal_patch_size {d['temporal_patch_size']} is not the LLaVA-OV-1.5 "
                             f"image processor's (1)")
        fields = cls.__dataclass_fields__
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields and v is not None})


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (the way a viewer shows an emoji)."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def patch_positions(grid: tuple[int, int, int], merge_size: int = 2) -> np.ndarray:
    """(row, col) of every patch in 2×2-window order: the positions the ViT's 2D RoPE needs."""
    t, h, w = grid
    rows = np.arange(h).reshape(h // merge_size, merge_size, 1, 1) * np.ones((1, 1, w // merge_size, merge_size))
    cols = np.arange(w).reshape(1, 1, w // merge_size, merge_size) * np.ones((h // merge_size, merge_size, 1, 1))
    rows = rows.transpose(0, 2, 1, 3).reshape(-1)
    cols = cols.transpose(0, 2, 1, 3).reshape(-1)
    return np.tile(np.stack([rows, cols], -1).astype(np.int64), (t, 1))
