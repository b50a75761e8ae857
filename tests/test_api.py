"""The HTTP API (llm/serving/http): every route and bad-input case through FastAPI's TestClient, the
official `openai` client against a live uvicorn on loopback, and a client that disconnects mid-stream.

Models are tiny random checkpoints made here, loaded through the real `SpamClassifier.load` /
`InstructionModel.load`, so the whole path (HTTP -> queue/worker -> library -> model) runs.
"""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch

from llm.checkpoint import save_checkpoint
from llm.config import GPTConfig
from llm.model import GPT, GPTClassifier
from llm.serving.limits import EngineLimits

fastapi_testclient = pytest.importorskip("fastapi.testclient")
from llm.serving.http import app as api  # noqa: E402
from llm.serving.http import schemas  # noqa: E402
from llm.serving.limits import MAX_TEXT_CHARS  # noqa: E402
from llm.serving.registry import INSTRUCT_MODEL_ID, SPAM_MODEL_ID, ModelSpec  # noqa: E402
from llm.serving.runtime import Runtime  # noqa: E402

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=128)
LONG_CONTEXT = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=1024)  # room for a long stream to cut
USER = [{"role": "user", "content": "Name a colour."}]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def spam_ckpt(tmp_path_factory, tokenizer):
    torch.manual_seed(1)
    return save_checkpoint(GPTClassifier(TINY, 2).eval(), tmp_path_factory.mktemp("api_spam"),
                           metadata={"labels": ["ham", "spam"], "max_length": 64})


@pytest.fixture(scope="module")
def instruct_ckpt(tmp_path_factory, tokenizer):
    pytest.importorskip("llm.instruct", reason="llm/instruct.py (instruction model) not there yet")
    torch.manual_seed(2)
    return save_checkpoint(GPT(LONG_CONTEXT).eval(), tmp_path_factory.mktemp("api_instruct"))


def spam_loader(path):
    from llm.spam import SpamClassifier
    return lambda: SpamClassifier.load(path, device="cpu")


def instruct_loader(path):
    from llm.instruct import InstructionModel
    return lambda: InstructionModel.load(path, device="cpu")


def runtime_of(spam, instruct, **limits) -> Runtime:
    """A runtime over these loaders, its models loaded (as on a server that has finished starting)."""
    from llm import instruct as instruct_lib, spam as spam_lib
    runtime = Runtime([ModelSpec(SPAM_MODEL_ID, "spam classifier", lambda: spam_lib.checkpoint_path(None),
                                 spam_lib.CREATE_HINT, spam),
                       ModelSpec(INSTRUCT_MODEL_ID, "assistant", lambda: instruct_lib.checkpoint_path(None),
                                 instruct_lib.CREATE_HINT, instruct)], EngineLimits(**limits))
    runtime.registry.load(SPAM_MODEL_ID), runtime.registry.load(INSTRUCT_MODEL_ID)
    return runtime


@pytest.fixture(scope="module")
def client(spam_ckpt, instruct_ckpt):
    runtime = runtime_of(spam_loader(spam_ckpt), instruct_loader(instruct_ckpt))
    with fastapi_testclient.TestClient(api.create_app(runtime, api_key="")) as c:
        yield c
    runtime.close()


@pytest.fixture(scope="module")
def spam_client(spam_ckpt, tmp_path_factory):
    """Spam model only: the instruct checkpoint is missing (also covers the 503 path)."""
    runtime = runtime_of(spam_loader(spam_ckpt), instruct_loader(tmp_path_factory.mktemp("nothing") / "instruct"))
    with fastapi_testclient.TestClient(api.create_app(runtime, api_key="")) as c:
        yield c
    runtime.close()


def assert_error(r, status_range=(400, 499), contains: str | None = None):
    assert status_range[0] <= r.status_code <= status_range[1], (r.status_code, r.text[:500])
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    assert len(r.content) < 2000, "error bodies must not echo the (possibly huge) input"
    if contains:
        assert contains in body["error"]["message"], body
    return body["error"]


# ----------------------------------------------------------------------------- schema mapping
def test_messages_to_instruction_and_history():
    m = [schemas.ChatMessage(role=r, content=c) for r, c in [
        ("system", "Be terse."), ("user", "Q1"), ("assistant", "A1"), ("assistant", "orphan"),
        ("user", "Q2a"), ("user", "Q2b"), ("assistant", "A2"), ("user", "Q3")]]
    instruction, history = schemas.to_instruction(m)
    assert instruction == "Q3"
    assert history == [("Q1", "A1"), ("Q2a\nQ2b", "A2")]
    parts = schemas.ChatMessage(role="user", content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
    assert schemas.to_instruction([schemas.ChatMessage(role="user", content="x"), parts]) == ("x\nab", [])


# ----------------------------------------------------------------------------- routes
def test_health_and_models(client):
    h = client.get("/health").json()
    assert h["status"] == "ok"
    assert h["models"][SPAM_MODEL_ID]["ready"] and h["models"][INSTRUCT_MODEL_ID]["ready"]
    models = client.get("/v1/models").json()
    assert models["object"] == "list"
    assert {m["id"] for m in models["data"]} == {SPAM_MODEL_ID, INSTRUCT_MODEL_ID}
    assert all(m["object"] == "model" and m["ready"] for m in models["data"])


def test_classify_matches_the_library(spam_client, spam_ckpt):
    from llm.spam import SPAM_THRESHOLD, SpamClassifier
    texts = ["WINNER!! Claim your prize now", "See you at 7?", "ok", "x" * MAX_TEXT_CHARS]
    r = spam_client.post("/v1/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    expected = SpamClassifier.load(spam_ckpt, device="cpu").classify(texts)
    assert [d["index"] for d in data] == list(range(len(texts)))
    for d, (label, p) in zip(data, expected):
        assert d["label"] == label and d["p_spam"] == pytest.approx(p, abs=1e-5)
        assert 0 <= d["p_spam"] <= 1 and (d["label"] == "spam") == (d["p_spam"] >= SPAM_THRESHOLD)


def test_classify_threshold_override_and_bands(spam_client, spam_ckpt):
    from llm.spam import SPAM_THRESHOLD, SpamClassifier, band_of
    texts = ["WINNER!! Claim your prize now", "See you at 7?", "ok"]
    p = SpamClassifier.load(spam_ckpt, device="cpu").p_spam(texts)
    default = spam_client.post("/v1/classify", json={"texts": texts}).json()
    assert default["threshold"] == SPAM_THRESHOLD
    assert [d["band"] for d in default["data"]] == [band_of(q) for q in p]
    low = min(p) * 0.9
    r = spam_client.post("/v1/classify", json={"texts": texts, "threshold": low})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["threshold"] == low
    assert [d["label"] for d in body["data"]] == ["spam"] * 3
    assert [d["band"] for d in body["data"]] == [band_of(q, low) for q in p]
    assert [d["p_spam"] for d in body["data"]] == [d["p_spam"] for d in default["data"]]  # labels move, not p


def test_classify_uses_the_checkpoint_threshold(tmp_path):
    torch.manual_seed(1)
    ckpt = save_checkpoint(GPTClassifier(TINY, 2).eval(), tmp_path / "spam",
                           metadata={"labels": ["ham", "spam"], "max_length": 64, "threshold": 1e-6})
    runtime = runtime_of(spam_loader(ckpt), lambda: None)
    try:
        with fastapi_testclient.TestClient(api.create_app(runtime, api_key="")) as c:
            body = c.post("/v1/classify", json={"texts": ["hi", "see you"]}).json()
        assert body["threshold"] == 1e-6 and [d["label"] for d in body["data"]] == ["spam", "spam"]
    finally:
        runtime.close()


def test_concurrent_classify_requests_are_batched_and_each_gets_its_own_answer(spam_client, spam_ckpt):
    from concurrent.futures import ThreadPoolExecutor
    from llm.spam import SpamClassifier
    texts = [f"message number {i} " + "win cash " * (i % 5) for i in range(24)]
    expected = SpamClassifier.load(spam_ckpt, device="cpu").classify(texts)
    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(lambda t: spam_client.post("/v1/classify", json={"texts": [t]}), texts))
    for r, (label, p) in zip(results, expected):
        assert r.status_code == 200
        assert r.json()["data"][0]["p_spam"] == pytest.approx(p, abs=1e-5)


def test_odd_but_valid_unicode_is_classified(spam_client):
    texts = ["\ud800 lone surrogate", "nul \u0000 inside", "emoji \U0001F600 and \u00e9", "\u202e right-to-left"]
    raw = json.dumps({"texts": texts}).encode()  # escaped in JSON: valid JSON, odd strings
    r = spam_client.post("/v1/classify", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert [d["label"] in ("spam", "ham") for d in r.json()["data"]] == [True] * 4


BAD_CLASSIFY = {
    "malformed JSON": dict(content=b'{"texts": ["a",', headers={"content-type": "application/json"}),
    "invalid UTF-8": dict(content=b'{"texts": ["\xff\xfe bad"]}', headers={"content-type": "application/json"}),
    "not JSON content type": dict(content=b"texts=a", headers={"content-type": "application/x-www-form-urlencoded"}),
    "lone surrogate in a key": dict(content=b'{"texts": ["a"], "\\ud800": 1}', headers={"content-type": "application/json"}),
    "body is a list": dict(json=["a", "b"]),
    "wrong field name": dict(json={"text": ["a"]}),
    "extra field": dict(json={"texts": ["a"], "temperature": 1}),
    "threshold 0": dict(json={"texts": ["a"], "threshold": 0}),
    "threshold 1": dict(json={"texts": ["a"], "threshold": 1}),
    "threshold above 1": dict(json={"texts": ["a"], "threshold": 1.5}),
    "negative threshold": dict(json={"texts": ["a"], "threshold": -0.2}),
    "threshold as a string": dict(json={"texts": ["a"], "threshold": "0.5"}),
    "threshold a boolean": dict(json={"texts": ["a"], "threshold": True}),
    "threshold NaN": dict(content=b'{"texts": ["a"], "threshold": NaN}', headers={"content-type": "application/json"}),
    "texts not a list": dict(json={"texts": "a"}),
    "text not a string": dict(json={"texts": [1, 2]}),
    "null text": dict(json={"texts": [None]}),
    "empty list": dict(json={"texts": []}),
    "blank text": dict(json={"texts": ["ok", "   "]}),
    "10,000 texts": dict(json={"texts": ["hello"] * 10_000}),
    "1 MB text": dict(json={"texts": ["a" * 1_000_000]}),
    "3 MB body": dict(json={"texts": ["a" * 3_000_000]}),
    "17 texts to explain": dict(json={"texts": ["hello"] * 17, "explain": True}),
}


@pytest.mark.parametrize("case", BAD_CLASSIFY, ids=list(BAD_CLASSIFY))
def test_classify_bad_input_is_a_4xx_with_a_message(spam_client, case):
    err = assert_error(spam_client.post("/v1/classify", **BAD_CLASSIFY[case]))
    assert err["type"] == "invalid_request_error"


def test_classify_limit_messages_say_what_to_do(spam_client):
    assert_error(spam_client.post("/v1/classify", json={"texts": ["a"] * 10_000}), (400, 400), "at most 500")
    assert_error(spam_client.post("/v1/classify", json={"texts": ["a" * 1_000_000]}), (400, 400), "at most 10,000")
    assert_error(spam_client.post("/v1/classify", content=b"{", headers={"content-type": "application/json"}),
                 (400, 400), "JSON")
    assert_error(spam_client.post("/v1/classify", content=b'{"texts": ["\xff"]}',
                                  headers={"content-type": "application/json"}), (400, 400), "UTF-8")
    assert_error(spam_client.post("/v1/classify", json={"texts": ["a" * 3_000_000]}), (413, 413))
    assert_error(spam_client.get("/v1/classify"), (405, 405))
    assert_error(spam_client.get("/v1/nothing"), (404, 404))


BAD_CHAT = {
    "negative max_tokens": {"messages": USER, "max_tokens": -5},
    "zero max_tokens": {"messages": USER, "max_tokens": 0},
    "max_tokens too big": {"messages": USER, "max_tokens": 10**9},
    "max_tokens a string": {"messages": USER, "max_tokens": "lots"},
    "no messages field": {"prompt": "hi"},
    "empty messages": {"messages": []},
    "messages not a list": {"messages": "hi"},
    "unknown role": {"messages": [{"role": "wizard", "content": "hi"}]},
    "last message not user": {"messages": USER + [{"role": "assistant", "content": "Red."}]},
    "empty last message": {"messages": [{"role": "user", "content": "  "}]},
    "content not text": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    "content a number": {"messages": [{"role": "user", "content": 5}]},
    "1 MB message": {"messages": [{"role": "user", "content": "a" * 1_000_000}]},
    "n=2": {"messages": USER, "n": 2},
    "negative temperature": {"messages": USER, "temperature": -1},
    "top_p 0": {"messages": USER, "top_p": 0},
    "five stop strings": {"messages": USER, "stop": ["a", "b", "c", "d", "e"]},
    "empty stop string": {"messages": USER, "stop": [""]},
    "stream not bool": {"messages": USER, "stream": "sometimes"},
    "unknown field": {"messages": USER, "presence_penalty": 0.5},
    # numbers outside what the sampler takes (a 500 before the ranges were checked)
    "seed over 64 bits": {"messages": USER, "seed": 2**64},
    "negative seed": {"messages": USER, "seed": -1},
    "top_k 0": {"messages": USER, "top_k": 0},
    "temperature 3": {"messages": USER, "temperature": 3},
    # loosely typed fields, refused as OpenAI refuses them
    "max_tokens as a string": {"messages": USER, "max_tokens": "8"},
    "max_tokens as a float": {"messages": USER, "max_tokens": 8.0},
    "stream as 1": {"messages": USER, "stream": 1},
    "seed as a string": {"messages": USER, "seed": "7"},
    "content parts over the message limit": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "a" * 3_000}, {"type": "text", "text": "b" * 3_000}]}]},
    "too many content parts": {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * 65}]},
}


@pytest.mark.parametrize("case", BAD_CHAT, ids=list(BAD_CHAT))
def test_chat_bad_input_is_a_4xx_with_a_message(spam_client, case):
    # validated before the model is needed: 4xx even where the instruct model is missing
    assert_error(spam_client.post("/v1/chat/completions", json=BAD_CHAT[case]))


def test_missing_checkpoint_means_not_ready_and_503_naming_the_command(spam_client, tmp_path):
    h = spam_client.get("/health").json()
    assert h["status"] == "degraded"
    assert h["models"][SPAM_MODEL_ID]["ready"]
    instruct = h["models"][INSTRUCT_MODEL_ID]
    assert not instruct["ready"] and "finetune.instruct" in instruct["error"]
    err = assert_error(spam_client.post("/v1/chat/completions", json={"messages": USER}), (503, 503), "finetune.instruct")
    assert err["code"] == "model_not_ready"
    assert spam_client.get("/ready").status_code == 503
    # and the spam side: a server started with no spam checkpoint at all
    runtime = runtime_of(spam_loader(tmp_path / "no-spam"), lambda: None)
    with fastapi_testclient.TestClient(api.create_app(runtime)) as c:
        assert not c.get("/health").json()["models"][SPAM_MODEL_ID]["ready"]
        assert_error(c.post("/v1/classify", json={"texts": ["hi"]}), (503, 503), "finetune.spam")
        assert_error(c.post("/v1/classify", json={"texts": []}), (400, 400))  # bad input is still a 4xx
    runtime.close()


def test_a_number_is_a_valid_temperature_and_the_error_never_echoes_a_field_name(client):
    r = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2, "temperature": 1, "seed": 2**63 - 1})
    assert r.status_code == 200, r.text
    nulls = {"model": None, "temperature": None, "n": None, "stream": None, "top_p": None, "seed": None}
    r = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 2, **nulls})  # OpenAI: null = default
    assert r.status_code == 200 and r.json()["object"] == "chat.completion", r.text
    err = assert_error(client.post("/v1/chat/completions", json={"messages": USER, "x" * 100_000: 1}), (400, 400))
    assert "xxxxxxxxxx" in err["message"] and len(err["message"]) < 300


def test_a_long_prompt_makes_room_by_asking_fewer_tokens_not_by_cutting_the_question(client):
    """No max_tokens: as many as fit (the question is never dropped). An explicit max_tokens that cannot fit: 400."""
    long = "7 " * 900  # 900 tokens of a 1,024-token context
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long}]})
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert usage["prompt_tokens"] > 900 and usage["total_tokens"] <= 1024
    err = assert_error(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": long}],
                                                                  "max_tokens": 500}), (400, 400), "at most 1,024 tokens")
    assert err["code"] == "context_length_exceeded"


def test_a_corrupt_checkpoint_is_never_ready_and_answers_503_in_one_paragraph(spam_ckpt, instruct_ckpt, tmp_path):
    import shutil
    broken = tmp_path / "instruct"
    shutil.copytree(instruct_ckpt, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    runtime = runtime_of(spam_loader(spam_ckpt), instruct_loader(broken))
    with fastapi_testclient.TestClient(api.create_app(runtime)) as c:
        health = c.get("/health").json()
        assert health["status"] == "degraded" and not health["models"][INSTRUCT_MODEL_ID]["ready"]
        assert c.get("/ready").status_code == 503
        err = assert_error(c.post("/v1/chat/completions", json={"messages": USER}), (503, 503), "truncated")
        assert "Traceback" not in err["message"] and len(err["message"]) < 600
    runtime.close()


def test_api_key(spam_ckpt):
    runtime = runtime_of(spam_loader(spam_ckpt), lambda: None)
    with fastapi_testclient.TestClient(api.create_app(runtime, api_key="s3cret")) as c:
        assert c.get("/health").status_code == 200  # probes need no key
        assert_error(c.get("/v1/models"), (401, 401), "API key")
        assert c.get("/v1/models").headers["www-authenticate"].startswith("Bearer")
        assert c.head("/health").status_code == 200 and c.head("/ready").status_code in (200, 503)
        assert_error(c.post("/v1/classify", json={"texts": ["hi"]}, headers={"Authorization": "Bearer nope"}), (401, 401))
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        r = c.post("/v1/classify", json={"texts": ["hi"]}, headers={"X-API-Key": "s3cret"})
        assert r.status_code == 200 and r.json()["data"][0]["label"] in ("spam", "ham")
        # the key is checked before the body is read: no key, no parsing, no 413 either
        assert_error(c.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"}), (401, 401))
        assert_error(c.post("/v1/classify", json={"texts": ["a" * 3_000_000]}), (401, 401))
    runtime.close()


# ----------------------------------------------------------------------------- chat completions
def parse_sse(raw: str) -> list:
    events = [e for e in raw.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") for e in events), events[:3]
    payloads = [e[len("data: "):] for e in events]
    assert payloads[-1] == "[DONE]" and "[DONE]" not in payloads[:-1]
    return [json.loads(p) for p in payloads[:-1]]


def test_chat_completion_matches_the_library(client, instruct_ckpt):
    from llm.generate import GenerationSettings
    from llm.instruct import InstructionModel
    messages = [{"role": "system", "content": "ignored"}, {"role": "user", "content": "Say hi."},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Name a colour."}]
    r = client.post("/v1/chat/completions", json={"model": "anything", "messages": messages, "max_tokens": 12})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    model = InstructionModel.load(instruct_ckpt, device="cpu")
    expected = model.respond("Name a colour.", settings=GenerationSettings(max_new_tokens=12),
                             history=[("Say hi.", "Hi.")])
    assert choice["message"]["content"] == expected
    usage = body["usage"]
    assert usage["completion_tokens"] <= 12 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_streaming_sends_openai_chunks_then_done(client):
    req = {"messages": USER, "max_tokens": 16, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=req) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = parse_sse(r.read().decode())
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 16
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    plain = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 16}).json()
    assert streamed.strip() == plain["choices"][0]["message"]["content"]  # the plain answer is stripped, as respond()


def test_stop_sequence_and_sampling_options(client):
    plain = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 20}).json()
    text = plain["choices"][0]["message"]["content"]
    if len(text) >= 4:  # cut at a stop string taken from the greedy answer itself
        stop = text[2:4]
        cut = client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 20, "stop": stop}).json()
        assert cut["choices"][0]["message"]["content"] == text[:text.find(stop)].strip()
        assert cut["choices"][0]["finish_reason"] == "stop"
    assert plain["choices"][0]["finish_reason"] == ("length" if plain["usage"]["completion_tokens"] == 20 else "stop")
    a, b = (client.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 8, "temperature": 1.0,
                                                      "top_p": 0.9, "top_k": 50, "seed": 7}).json() for _ in range(2))
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]  # seeded


# ----------------------------------------------------------------------------- live server: openai client, faults
class LiveServer:
    def __init__(self, app):
        import uvicorn
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture(scope="module")
def live(spam_ckpt, instruct_ckpt):
    runtime = runtime_of(spam_loader(spam_ckpt), instruct_loader(instruct_ckpt), max_running=1)
    app = api.create_app(runtime, api_key="k3y")
    with LiveServer(app) as url:
        yield url, app, runtime
    runtime.close()


def test_openai_client_plain_and_streaming(live):
    openai = pytest.importorskip("openai")
    url, _, _ = live
    client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0, timeout=60)
    assert {m.id for m in client.models.list()} == {SPAM_MODEL_ID, INSTRUCT_MODEL_ID}
    done = client.chat.completions.create(model=INSTRUCT_MODEL_ID, messages=USER, max_tokens=10)
    assert done.choices[0].message.role == "assistant" and done.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(model=INSTRUCT_MODEL_ID, messages=USER, max_tokens=10, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces).strip() == done.choices[0].message.content
    with pytest.raises(openai.BadRequestError):  # 400, as OpenAI answers invalid parameters
        client.chat.completions.create(model="x", messages=USER, max_tokens=-1)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_client_disconnect_mid_stream_frees_the_slot(live):
    import httpx
    url, app, runtime = live
    headers = {"Authorization": "Bearer k3y"}
    req = {"messages": USER, "max_tokens": 900, "stream": True}
    steps_before = runtime.engine.steps
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", url + "/v1/chat/completions", json=req, headers=headers) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [line for line, _ in zip(lines, range(6)) if line.startswith("data: ")]
            assert len(got) >= 3
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 20
    while runtime.engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runtime.engine.stats()["running"] == 0, "the slot was not given back"
    assert runtime.engine.steps - steps_before < 800  # the request was cancelled, it did not run to the end
    with httpx.Client(timeout=30) as c:  # and the server keeps serving, with the one slot free
        r = c.post(url + "/v1/chat/completions", json={"messages": USER, "max_tokens": 4}, headers=headers)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
        engine = c.get(url + "/health").json()["engine"]
        assert engine["running"] == 0 and engine["waiting"] == 0


def test_a_client_that_leaves_before_a_whole_answer_frees_the_slot(live):
    """Not streamed: the client closes its socket while the answer is being written; the request is cancelled
    within CLIENT_CHECK_S instead of running to max_tokens (and holding the slot) for nobody."""
    import socket
    from urllib.parse import urlparse
    url, app, runtime = live
    body = json.dumps({"messages": USER, "max_tokens": 900}).encode()
    steps_before = runtime.engine.steps
    where = urlparse(url)
    with socket.create_connection((where.hostname, where.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k3y\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        deadline = time.monotonic() + 20
        while not runtime.engine.stats()["running"]:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.01)
    deadline = time.monotonic() + 20  # the socket is closed: the request must leave
    while runtime.engine.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runtime.engine.stats()["running"] == 0, "the slot was not given back"
    assert runtime.engine.steps - steps_before < 800  # cancelled, not run to the end


def test_a_body_that_stops_arriving_is_a_408_not_a_connection_held_for_ever(spam_ckpt, instruct_ckpt, monkeypatch):
    import socket
    monkeypatch.setattr(api, "BODY_READ_TIMEOUT_S", 0.5)
    runtime = runtime_of(spam_loader(spam_ckpt), instruct_loader(instruct_ckpt))
    with LiveServer(api.create_app(runtime, api_key="")) as url:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"texts\": [")  # and then nothing
            started, answer = time.monotonic(), b""
            while b"stopped arriving" not in answer and time.monotonic() - started < 5:
                answer += sock.recv(4096)  # the headers and the body may come in separate reads
        assert answer.startswith(b"HTTP/1.1 408") and b"stopped arriving" in answer
        assert time.monotonic() - started < 5
    runtime.close()


def test_a_full_queue_is_a_429_with_retry_after(spam_ckpt, instruct_ckpt):
    runtime = runtime_of(spam_loader(spam_ckpt), instruct_loader(instruct_ckpt), max_running=1, max_waiting=1)
    with fastapi_testclient.TestClient(api.create_app(runtime)) as c:
        from llm.generate import GenerationSettings
        lm = runtime.registry.loaded(INSTRUCT_MODEL_ID)
        hold = threading.Event()
        blocker = runtime.engine.submit(lm, [1, 2, 3], GenerationSettings(max_new_tokens=500),
                                        lambda k, v: hold.wait(5) if k == "text" else None)
        while not runtime.engine.stats()["running"]:
            time.sleep(0.001)
        queued = runtime.engine.submit(lm, [1, 2], GenerationSettings(max_new_tokens=1), lambda k, v: None)
        r = c.post("/v1/chat/completions", json={"messages": USER, "max_tokens": 4})
        err = assert_error(r, (429, 429), "busy")
        assert r.headers["retry-after"] == "1" and err["code"] == "busy"
        runtime.engine.cancel(blocker), runtime.engine.cancel(queued)
        hold.set()
    runtime.close()


def test_the_server_shuts_down_while_a_client_stalls_mid_request(spam_ckpt, instruct_ckpt, tmp_path):
    """SIGTERM with a client that sent half a body and went quiet: the server waits --shutdown-timeout, then exits."""
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LLM_SPAM_CHECKPOINT": str(spam_ckpt), "LLM_INSTRUCT_CHECKPOINT": str(instruct_ckpt)}
    server = subprocess.Popen([sys.executable, "-m", "llm.serving.http", "--port", str(port), "--device", "cpu",
                               "--shutdown-timeout", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
                time.sleep(0.1)
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 100\r\n\r\n{\"texts\": [")  # and nothing more
        time.sleep(0.3)
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
        assert time.monotonic() - start < 10
        stalled.close()
    finally:
        if server.poll() is None:
            server.kill()


def test_classify_explain_returns_the_top_words(spam_client, spam_ckpt):
    from llm.spam import SpamClassifier
    texts = ["win a cash prize now", "see you at seven"]
    plain = spam_client.post("/v1/classify", json={"texts": texts}).json()
    assert all("explanation" not in d for d in plain["data"])
    r = spam_client.post("/v1/classify", json={"texts": texts, "explain": True})
    assert r.status_code == 200, r.text
    clf = SpamClassifier.load(spam_ckpt, device="cpu")
    for d, t in zip(r.json()["data"], texts):
        e = clf.explain(t)
        assert [w["word"] for w in d["explanation"]["towards_spam"]] == [w for w, _ in e.towards_spam()]
        assert [w["word"] for w in d["explanation"]["towards_ham"]] == [w for w, _ in e.towards_ham()]
    assert_error(spam_client.post("/v1/classify", json={"texts": texts, "explain": 1}), (400, 400))
    odd = json.dumps({"texts": ["free \ud800 prize"], "explain": True}).encode()  # a lone surrogate: valid JSON
    r = spam_client.post("/v1/classify", content=odd, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    words = [w["word"] for side in r.json()["data"][0]["explanation"].values() for w in side]
    assert "\ufffd" in words or len(words) < 3  # sent back as U+FFFD, when it is among the top words


def test_the_probability_sent_never_contradicts_the_label_at_the_threshold(spam_client):
    p = spam_client.post("/v1/classify", json={"texts": ["hi"]}).json()["data"][0]["p_spam"]
    for threshold, label in ((p, "spam"), (min(p + 1e-12, 0.999999), "ham")):
        d = spam_client.post("/v1/classify", json={"texts": ["hi"], "threshold": threshold}).json()["data"][0]
        assert d["label"] == label and (d["p_spam"] >= threshold) == (label == "spam")
