"""The HTTP API fuzzed against its own OpenAPI schema with schemathesis (bounded examples, tiny models).

For every operation schemathesis generates valid and invalid requests from /openapi.json and checks
each answer: never a 5xx, the status code and body documented, the content type declared, and invalid
input refused with a 4xx. The models are tiny random checkpoints loaded through the real loaders, so
valid chat requests really generate (a short context keeps that fast).
"""
from __future__ import annotations

import pytest
import torch

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402

from llm.checkpoint import save_checkpoint  # noqa: E402
from llm.config import GPTConfig  # noqa: E402
from llm.model import GPT, GPTClassifier  # noqa: E402
from llm.prompt import template_metadata  # noqa: E402
from llm.serving.http.app import create_app  # noqa: E402
from llm.serving.limits import EngineLimits  # noqa: E402
from llm.serving.registry import INSTRUCT_MODEL_ID, SPAM_MODEL_ID, default_specs  # noqa: E402
from llm.serving.runtime import Runtime  # noqa: E402

TINY = GPTConfig(n_layer=1, n_head=2, n_embd=16, n_positions=128)


def make_app(tmp_path_factory):
    if not _tokenizer_available():
        return None
    root = tmp_path_factory.mktemp("schema_models")
    torch.manual_seed(0)
    spam = save_checkpoint(GPTClassifier(TINY, 2).eval(), root / "spam", metadata={"labels": ["ham", "spam"], "max_length": 64})
    instruct = save_checkpoint(GPT(TINY).eval(), root / "instruct", metadata={"prompt_template": template_metadata()})
    runtime = Runtime(default_specs(spam, instruct, device="cpu"), EngineLimits(max_running=4, max_waiting=64))
    runtime.registry.load(SPAM_MODEL_ID), runtime.registry.load(INSTRUCT_MODEL_ID)
    return create_app(runtime, api_key="")


def _tokenizer_available() -> bool:
    from llm.tokenizer import TokenizerError, get_tokenizer
    try:
        get_tokenizer()
        return True
    except TokenizerError:
        return False


@pytest.fixture(scope="module")
def api_app(tmp_path_factory):
    app = make_app(tmp_path_factory)
    if app is None:
        pytest.skip("GPT-2 BPE files unavailable (offline, no LLM_BPE_DIR)")
    yield app
    app.state.runtime.close()


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(scope="module")
def api_schema(api_app):
    return schemathesis.openapi.from_asgi("/openapi.json", api_app)


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_schema(case):
    # A chat has rules JSON Schema cannot state (the last message comes from the user and has text; the prompt and
    # max_tokens fit the context): a schema-valid chat may get a documented 400, never a 5xx or an undocumented answer.
    semantic = case.operation.path == "/v1/chat/completions"
    case.call_and_validate(excluded_checks=[schemathesis.checks.positive_data_acceptance] if semantic else None)
