"""The one prompt template (llm/prompt.py)."""
from llm.prompt import PREAMBLE, RESPONSE_HEADER, format_prompt, template_metadata


def test_prompt_without_input_is_exactly_alpaca():
    assert format_prompt("Name a color.") == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nName a color.\n\n### Response:\n")


def test_prompt_with_input_adds_input_section():
    p = format_prompt("Fix the spelling.", "Ocassion")
    assert p == PREAMBLE + "\n\n### Instruction:\nFix the spelling.\n\n### Input:\nOcassion\n\n### Response:\n"
    assert p.endswith(RESPONSE_HEADER) and "### Input:" not in format_prompt("Fix the spelling.", "")


def test_template_metadata_renders_the_same_prompt():
    m = template_metadata()
    assert m["preamble"] + m["instruction_header"] + "x" + m["input_header"] + "y" + m["response_header"] == format_prompt("x", "y")
