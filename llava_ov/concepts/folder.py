"""Checks on a CLIP/MetaCLIP folder before a single weight is read: the 4b/8b profiles import one from disk.

A folder that does not fit would otherwise fail late and obscurely (a shape error deep in ``from_pretrained``, or
token ids past the embedding table that silently index garbage on some devices), or worse, run code or unpickle
weights. So the folder is refused up front, by a message that names it and the mismatch: it must hold a CLIP
``config.json``, safetensors weights only (never ``pytorch_model.bin``, never code: the model class is always
transformers' own ``CLIPModel``), projections of the size its config declares on both towers, an image processor,
and a tokenizer whose ids fit the text tower's embedding table and whose EOS is the token the tower pools at.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from transformers import AutoTokenizer, CLIPConfig

LEGACY_EOS_ID = 2  # transformers' CLIP pools at the highest token id when text_config.eos_token_id is 2


class EncoderFolderError(ValueError):
    """A concept-encoder folder that cannot be used; the message names the folder and what does not fit."""


def _weight_shapes(folder: Path, names: tuple[str, ...]) -> dict[str, list[int]]:
    """Shapes of some tensors, read from the safetensors headers (through the index when sharded)."""
    index = folder / "model.safetensors.index.json"
    files = (json.loads(index.read_text())["weight_map"] if index.is_file()
             else {name: "model.safetensors" for name in names})
    shapes = {}
    for name in names:
        if name not in files:
            continue
        with safe_open(folder / files[name], framework="pt") as f:
            if name in f.keys():
                shapes[name] = list(f.get_slice(name).get_shape())
    return shapes


def check_encoder_folder(folder: Path | str) -> None:
    """Raise :class:`EncoderFolderError` unless ``folder`` is a usable CLIP-style encoder folder."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise EncoderFolderError(f"concept encoder {folder}: no config.json; give a transformers CLIP/MetaCLIP folder")
    config = json.loads(config_path.read_text())
    if config.get("model_type") != "clip":
        raise EncoderFolderError(f"concept encoder {folder}: model_type is {config.get('model_type')!r}, not 'clip'")
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise EncoderFolderError(f"concept encoder {folder}: no model.safetensors (found {found}); only safetensors "
                                 f"weights are read (a pickle can run code): convert the checkpoint first")
    if not (folder / "preprocessor_config.json").is_file():
        raise EncoderFolderError(f"concept encoder {folder}: no preprocessor_config.json (its image processor)")
    resolved = CLIPConfig.from_pretrained(folder)  # the values CLIPModel will build, defaults included
    proj, text_cfg = resolved.projection_dim, resolved.text_config
    widths = {"text_projection.weight": text_cfg.hidden_size,
              "visual_projection.weight": resolved.vision_config.hidden_size}
    shapes = _weight_shapes(folder, tuple(widths))
    for name, width in widths.items():
        if shapes.get(name) != [proj, width]:
            raise EncoderFolderError(f"concept encoder {folder}: {name} has shape {shapes.get(name)}, but its config "
                                     f"declares projection_dim {proj} from width {width}: the folder's weights and "
                                     f"config.json do not belong together")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise EncoderFolderError(f"concept encoder {folder}: its tokenizer does not load ({e})") from e
    vocab = text_cfg.vocab_size
    if len(tokenizer) > vocab:
        raise EncoderFolderError(f"concept encoder {folder}: the tokenizer has {len(tokenizer)} tokens but the text "
                                 f"tower embeds only {vocab}: this tokenizer is not the model's")
    if tokenizer.eos_token_id is None and text_cfg.eos_token_id is None:
        raise EncoderFolderError(f"concept encoder {folder}: neither the tokenizer nor config.json names an EOS "
                                 f"token, where CLIP pools the text")
    _check_pooling(folder, tokenizer, text_cfg.eos_token_id)


def _check_pooling(folder: Path, tokenizer, config_eos: int | None) -> None:
    """The text tower must pool where the tokenizer ends each text: transformers' CLIP pools at the first
    ``text_config.eos_token_id``, or, for the legacy value 2 (older OpenAI/OpenCLIP conversions), at the highest
    token id of each text, which is the EOS only where the EOS is the vocabulary's highest id. Otherwise every text
    is embedded at another token, without an error."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else config_eos
    if config_eos == LEGACY_EOS_ID:
        highest = max(tokenizer.get_vocab().values())
        if eos != highest:
            raise EncoderFolderError(
                f"concept encoder {folder}: config.json's text_config.eos_token_id is 2, for which transformers' CLIP "
                f"pools each text at its highest token id, but the tokenizer's EOS {eos} is not the highest id "
                f"({highest}): texts would be embedded at the wrong token; set text_config.eos_token_id to {eos}")
    elif config_eos is not None and eos != config_eos:
        raise EncoderFolderError(
            f"concept encoder {folder}: the text tower pools at token {config_eos} (text_config.eos_token_id) but the "
            f"tokenizer ends texts with {eos}: set text_config.eos_token_id to {eos}, or use the model's tokenizer")
