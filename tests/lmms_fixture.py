"""A tiny lmms-eval benchmark, made by the tests: rendered shape images as local parquet, and three task YAMLs.

- ``shapes_mc``: multiple choice the way MMStar/AI2D/MMMU are scored: options A-D in the prompt, a generated letter
  matched exactly (``generate_until``);
- ``shapes_short``: a short answer (the shape's name), exact match (``generate_until``);
- ``shapes_choice``: the same colour question as lmms-eval ``multiple_choice`` (log-likelihood over the colours).

Everything is deterministic (same bytes on every run), so digests and cached results can be compared across runs.
The parquet file carries the Hugging Face ``Image`` feature, as hub datasets do.
"""

from __future__ import annotations

import io
from pathlib import Path

import datasets
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "blue", "green", "yellow")
TASKS = ("shapes_mc", "shapes_short", "shapes_choice")

UTILS = '''
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def mc_doc_to_text(doc):
    options = "\\n".join(f"{letter}. {text}" for letter, text in zip("ABCD", doc["options"]))
    return f"What color is the shape?\\n{options}\\nAnswer with the option's letter from the given choices directly."


def choice_doc_to_text(doc):
    return "What color is the shape?"
'''

COMMON = """dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function utils.doc_to_visual
"""

EXACT = """metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: true
"""

YAMLS = {
    "shapes_mc": "task: shapes_mc\n" + COMMON + "output_type: generate_until\n"
                 "doc_to_text: !function utils.mc_doc_to_text\ndoc_to_target: letter\ngeneration_kwargs:\n  max_new_tokens: 4\n  temperature: 0\n"
                 "  do_sample: false\n" + EXACT,
    "shapes_short": "task: shapes_short\n" + COMMON + "output_type: generate_until\ndoc_to_text: \"What shape is this?"
                    "\\nAnswer the question using a single word or phrase.\"\ndoc_to_target: shape\n"
                    "generation_kwargs:\n  max_new_tokens: 4\n  temperature: 0\n  do_sample: false\n" + EXACT,
    "shapes_choice": "task: shapes_choice\n" + COMMON + "output_type: multiple_choice\n"
                     "doc_to_text: !function utils.choice_doc_to_text\ndoc_to_target: colour\n"
                     "doc_to_choice: [red, blue, green, yellow]\nmetric_list:\n  - metric: acc\n"
                     "    aggregation: mean\n    higher_is_better: true\n",
}


def render(shape: str, colour: str, size: int) -> bytes:
    """One shape on a white background, as PNG bytes (PIL writes no timestamps: same bytes every time)."""
    im = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(im)
    box = (size // 5, size // 5, size - size // 5, size - size // 5)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def docs(n: int = 20, broken: tuple[int, ...] = ()) -> list[dict]:
    """``n`` items; those in ``broken`` carry bytes that are not an image."""
    out = []
    for i in range(n):
        shape, colour = SHAPES[i % 3], COLOURS[(i // 3) % 4]
        options = list(COLOURS[i % 4:] + COLOURS[:i % 4])  # the right answer moves between the letters
        image = b"not an image" if i in broken else render(shape, colour, 48 + 4 * (i % 5))
        out.append({"id": f"shape-{i:02d}", "image": {"bytes": image, "path": None}, "shape": shape,
                    "colour": colour, "options": options, "letter": "ABCD"[options.index(colour)]})
    return out


def write_benchmark(root: Path, data_ref: str | None = None, n: int = 20, broken: tuple[int, ...] = ()) -> Path:
    """Write ``root/data/test.parquet`` and the task folder ``root/tasks`` (returned). The YAMLs name the parquet
    file as ``data_ref`` (default: its absolute path; a project-relative path for a stage run)."""
    data = root / "data" / "test.parquet"
    data.parent.mkdir(parents=True, exist_ok=True)
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(),
                                  "shape": datasets.Value("string"), "colour": datasets.Value("string"),
                                  "options": datasets.List(datasets.Value("string")),
                                  "letter": datasets.Value("string")})
    rows = docs(n, broken)
    datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in features}, features=features).to_parquet(data)
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / "utils.py").write_text(UTILS.lstrip())
    for name, text in YAMLS.items():
        (tasks / f"{name}.yaml").write_text(text.format(data=data_ref or data))
    return tasks
