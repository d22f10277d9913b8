"""Embedded sources: one helper lays out every pool's record, with the instructions the eval specs read too."""

import pytest

from llava_ov.data.prompts import POOL_PROMPTS
from llava_ov.data.sources import record
from llava_ov.eval.tasks import load_spec

IMAGE = [b"png bytes"]
KNOWN = dict(caption="A red circle.", description="One red circle on white.",
             qa=[("Colour?", "red"), ("Shape?", "circle")], question="What colour is it?", answer="red",
             choices=["blue", "red"])


def test_record_lays_out_each_pool_from_what_the_source_knows():
    align, mid, instruct, ev = (record("demo", pool, "caption", IMAGE, **KNOWN)
                                for pool in ("align", "mid", "instruct", "eval"))
    assert align.messages == [{"role": "user", "content": "<image>\nGive a short caption."},
                              {"role": "assistant", "content": "A red circle."}]
    assert mid.messages[0]["content"] == "<image>\nDescribe the image in detail."
    assert [m["content"] for m in instruct.messages] == ["<image>\nColour?", "red", "Shape?", "circle"]
    assert ev.messages[0]["content"] == "<image>\nWhat colour is it?" and ev.messages[1]["content"] == "red"
    assert ev.extra == {"task": "demo", "answer": "red", "choices": ["blue", "red"]}
    assert not align.extra and align.images == IMAGE and align.source == "demo"


def test_record_names_what_a_pool_lacks():
    with pytest.raises(ValueError, match=r"the eval record needs \['answer', 'choices'\]"):
        record("demo", "eval", "caption", IMAGE, question="What colour is it?")
    with pytest.raises(ValueError, match="unknown pool 'train'"):
        record("demo", "train", "caption", IMAGE, caption="x")


@pytest.mark.parametrize("task, pool", [("caption", "align"), ("description", "mid")])
def test_loss_tasks_ask_with_the_pools_own_instruction(task, pool):
    assert load_spec(task)["prompt"] == f"<image>\n{POOL_PROMPTS[pool]}"


def test_a_spec_naming_a_pool_without_texts_is_a_clear_error(tmp_path):
    from llava_ov.eval.tasks import SPEC_DIR

    text = (SPEC_DIR / "caption.yaml").read_text()
    (tmp_path / "caption.yaml").write_text(text.replace("target: {pool: align}", "target: {pool: instruct}"))
    with pytest.raises(ValueError, match="target names pool 'instruct'"):
        load_spec("caption", tmp_path)
    (tmp_path / "caption.yaml").write_text(text.replace("[digits, emoji, ocr]", "[digits, chart]"))
    with pytest.raises(ValueError, match="among the sources with a template for pool align"):
        load_spec("caption", tmp_path)
