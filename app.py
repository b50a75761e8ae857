"""The chat app: `chainlit run app.py` (or `make app`, which first prepares missing checkpoints).

Thin Chainlit handlers over `llm/router.py`, where every rule lives:
  chat profile "Spam check" -> a verdict with the spam probability per line, or a labelled CSV per file
  chat profile "Assistant"  -> streamed answers from the instruction-tuned model (Stop really stops)
Checkpoints: $LLM_SPAM_CHECKPOINT / $LLM_INSTRUCT_CHECKPOINT (default checkpoints/spam, checkpoints/instruct),
loaded once per process on the best device ($LLM_DEVICE to choose). Readiness: GET /ready.
"""
from __future__ import annotations

import threading
from pathlib import Path

import chainlit as cl
from chainlit.input_widget import Slider
from chainlit.server import app as fastapi_app
from fastapi.responses import JSONResponse
from starlette.routing import Route

from llm import router
from llm.router import ASSISTANT_MODE, SPAM_MODE

models = router.ModelCache()

STARTERS = {
    SPAM_MODE: [
        cl.Starter(label="A prize text", message="WINNER!! Claim your £900 prize now, call 09061701461"),
        cl.Starter(label="A friend's text", message="Are we still on for dinner tonight? I'll be there at 7."),
        cl.Starter(label="Several at once", message="Free entry in 2 a wkly comp to win FA Cup final tkts, text FA to 87121\n"
                                                    "Ok lar... Joking wif u oni...\n"
                                                    "URGENT! Your mobile No. was awarded £2000 Bonus Caller Prize, call 09066364349"),
    ],
    ASSISTANT_MODE: [
        cl.Starter(label="Rewrite a sentence", message="Rewrite the sentence using a simile: The car is very fast."),
        cl.Starter(label="Explain a word", message="What is the opposite of 'generous'?"),
        cl.Starter(label="Convert units", message="Convert 45 kilometers to meters."),
    ],
}


if router.login_enabled():  # optional: LLM_APP_USER (default admin) + LLM_APP_PASSWORD, and CHAINLIT_AUTH_SECRET
    @cl.password_auth_callback
    def password_login(username: str, password: str):
        return cl.User(identifier=username) if router.check_login(username, password) else None


@cl.set_chat_profiles
async def chat_profiles(user=None, language=None):
    return [
        cl.ChatProfile(name=SPAM_MODE, default=True, starters=STARTERS[SPAM_MODE],
                       markdown_description="Paste SMS messages (one per line) or attach a CSV/TXT: spam or ham, with the probability."),
        cl.ChatProfile(name=ASSISTANT_MODE, starters=STARTERS[ASSISTANT_MODE],
                       markdown_description="Ask the instruction-tuned GPT-2; answers stream as they are generated."),
    ]


def _mode() -> str:
    return router.mode_for(cl.user_session.get("chat_profile"))


@cl.on_chat_start
async def on_chat_start():
    mode = _mode()
    cl.user_session.set("conversation", router.Conversation())
    # Load first (once per process), so the first answer is fast, a missing checkpoint is said at once,
    # and the settings panel appearing means the session is ready.
    try:
        await cl.make_async(models.get)(mode)
    except router.ModelUnavailable as e:
        await cl.Message(content=router.unavailable_reply(mode, e)).send()
    if mode == ASSISTANT_MODE:
        d = router.DEFAULT_SETTINGS
        settings = await cl.ChatSettings([
            Slider(id="temperature", label="Temperature (0 = greedy)", initial=d["temperature"], min=0, max=1.5, step=0.1),
            Slider(id="top_k", label="Top-k (0 = off)", initial=d["top_k"], min=0, max=200, step=1),
            Slider(id="top_p", label="Top-p (1 = off)", initial=d["top_p"], min=0.05, max=1, step=0.05),
            Slider(id="max_new_tokens", label="Max new tokens", initial=d["max_new_tokens"], min=16, max=512, step=16),
        ]).send()
        cl.user_session.set("settings", settings)


@cl.on_settings_update
async def on_settings_update(settings: dict):
    cl.user_session.set("settings", settings)


@cl.on_stop
async def on_stop():
    stop = cl.user_session.get("stop")
    if stop is not None:
        stop.set()


@cl.on_message
async def on_message(message: cl.Message):
    mode = _mode()
    try:
        model = await cl.make_async(models.get)(mode)
    except router.ModelUnavailable as e:
        await cl.Message(content=router.unavailable_reply(mode, e)).send()
        return
    try:
        if mode == SPAM_MODE:
            await _spam(model, message)
        else:
            await _assistant(model, message)
    except router.InputError as e:
        await cl.Message(content=f"⚠️ {e}").send()


async def _spam(classifier, message: cl.Message):
    files = [e for e in (message.elements or []) if getattr(e, "path", None)]
    for f in files:
        try:
            data = Path(f.path).read_bytes()
            result = await cl.make_async(router.classify_upload)(classifier, f.name, data)
        except router.InputError as e:
            await cl.Message(content=f"⚠️ {e}").send()
            continue
        await cl.Message(content=result.summary, elements=[
            cl.File(name=result.filename, content=result.csv_bytes, mime="text/csv", display="inline")]).send()
    if message.content.strip() or not files:
        reply = await cl.make_async(router.spam_reply)(classifier, message.content)
        await cl.Message(content=reply).send()


async def _assistant(model, message: cl.Message):
    if message.elements:
        await cl.Message(content="ℹ️ Files are classified in **Spam check** mode; the assistant reads only your text.").send()
    router.check_instruction(message.content)  # InputError before the reply bubble opens
    stop = threading.Event()
    cl.user_session.set("stop", stop)
    settings = router.generation_settings(cl.user_session.get("settings"))
    conversation = cl.user_session.get("conversation")
    if conversation is None:  # a message before on_chat_start finished
        conversation = router.Conversation()
        cl.user_session.set("conversation", conversation)
    reply = cl.Message(content="")
    async for piece in router.stream_answer(model, message.content, settings, conversation, stop):
        await reply.stream_token(piece)
    if not reply.content.strip():
        reply.content = "_(no answer: the model stopped before writing anything)_"
    await reply.send()


# --------------------------------------------------------------------------- readiness for process managers
async def ready(request):
    """200 when both checkpoints exist (config.json present), else 503 naming what is missing.
    Chainlit's own GET /health is the liveness check."""
    from llm import instruct, spam

    checks = {
        "spam": spam.checkpoint_path(None) / "config.json",
        "instruct": instruct.checkpoint_path(None) / "config.json",
    }
    status = {name: ("ok" if path.is_file() else f"missing {path.parent}") for name, path in checks.items()}
    ok = all(v == "ok" for v in status.values())
    return JSONResponse({"status": "ready" if ok else "not ready", "checkpoints": status}, status_code=200 if ok else 503)


# Chainlit's catch-all UI route would shadow a route appended now, so /ready goes first.
if not any(getattr(r, "path", None) == "/ready" for r in fastapi_app.router.routes):
    fastapi_app.router.routes.insert(0, Route("/ready", ready, methods=["GET"]))
