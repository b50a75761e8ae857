"""The ONE prompt template of the instruction model (Alpaca style).

Training, evaluation, the CLI, the HTTP API and the app all build prompts with `format_prompt`,
so they cannot drift apart. A fine-tuned checkpoint records `template_metadata()` and
`llm.instruct.InstructionModel.load` refuses a checkpoint trained with a different template.

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:            <- only when there is an input
    {input}

    ### Response:
    {the model writes here, then <|endoftext|>}
"""
from __future__ import annotations

PREAMBLE = ("Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.")
INSTRUCTION_HEADER = "\n\n### Instruction:\n"
INPUT_HEADER = "\n\n### Input:\n"
RESPONSE_HEADER = "\n\n### Response:\n"
TEMPLATE_NAME = "alpaca/1"

# Generation ends before any of these, so a response never echoes the template's headers.
STOP_STRINGS = ("\n### ", "### Instruction:", "### Input:", "### Response:", PREAMBLE[:30])


def format_prompt(instruction: str, input: str = "") -> str:
    """The prompt for one instruction (and optional input); it ends with "\\n\\n### Response:\\n"."""
    text = PREAMBLE + INSTRUCTION_HEADER + instruction
    if input:
        text += INPUT_HEADER + input
    return text + RESPONSE_HEADER


def template_metadata() -> dict:
    """What a checkpoint records so inference can check it uses the template it was trained with."""
    return {"name": TEMPLATE_NAME, "preamble": PREAMBLE, "instruction_header": INSTRUCTION_HEADER,
            "input_header": INPUT_HEADER, "response_header": RESPONSE_HEADER}
