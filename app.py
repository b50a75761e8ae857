"""The chat app: `chainlit run app.py` (or `make app`, which first prepares missing checkpoints).

Thin Chainlit handlers over `llm/serving/chat.py` (the rules) and the process's serving runtime
(`llm/serving/runtime.py`: the model registry and the continuous-batching engine, shared with the API):
  chat profile "Spam check" -> a verdict with the spam probability per line, or a labelled CSV per file
  chat profile "Assistant"  -> streamed answers from the instruction-tuned model (Stop really stops)
Models start loading when the process starts; GET /ready says when both are loaded.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import chainlit as cl
from chainlit.input_widget import Slider
import chainlit.server as chainlit_server
from chainlit.server import UserParam
from chainlit.server import app as fastapi_app
from chainlit.types import DeleteFeedbackRequest, UpdateFeedbackRequest
from fastapi import HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse
from starlette.routing import Route

from llm.serving import chat, history
from llm.serving.chat import ASSISTANT_MODE, SPAM_MODE
from llm.serving.engine import EngineBusy
from llm.serving.limits import DISCONNECT_GRACE_S
from llm.serving.runtime import ContextOverflow, ModelUnavailable, get_runtime

# Chainlit warns on every page load that no chainlit_<language>.md exists: chainlit.md serves every language here.
logging.getLogger("chainlit").addFilter(lambda record: "Translated markdown file" not in record.getMessage())
runtime = get_runtime()  # loads both models in the background, now
store = history.open_store()  # conversations and feedback: $LLM_DATABASE_URL (default SQLite data/chat.db) or None
last_mode: dict[str, str] = {}  # user -> the mode of their latest chat, so a reload opens where they were
pending_stops: set[asyncio.Task] = set()  # on_chat_end's delayed stops

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


if store is not None:
    @cl.data_layer
    def data_layer():
        return store

if chat.login_enabled():  # LLM_APP_USERS="ana:pw,ben:pw" and/or LLM_APP_USER (default admin) + LLM_APP_PASSWORD
    @cl.password_auth_callback
    def password_login(username: str, password: str):
        return cl.User(identifier=username) if chat.check_login(username, password) else None
elif store is not None:  # history needs a user: without passwords, everyone on this machine is "local"
    @cl.header_auth_callback
    async def local_login(headers):
        return cl.User(identifier=chat.LOCAL_USER, metadata={"local": True})
if chat.login_enabled() or store is not None:
    chat.ensure_auth_secret()  # $CHAINLIT_AUTH_SECRET, else one kept in data/.chainlit_auth_secret


@cl.set_chat_profiles
async def chat_profiles(user=None, language=None):
    default = await _last_mode(user)
    return [
        cl.ChatProfile(name=SPAM_MODE, default=default == SPAM_MODE, starters=STARTERS[SPAM_MODE],
                       markdown_description="Paste SMS messages (one per line) or attach a CSV/TXT: spam or ham, with the probability."),
        cl.ChatProfile(name=ASSISTANT_MODE, default=default == ASSISTANT_MODE, starters=STARTERS[ASSISTANT_MODE],
                       markdown_description="Ask the instruction-tuned GPT-2; answers stream as they are generated."),
    ]


async def _last_mode(user) -> str:
    who = getattr(user, "identifier", None)
    if who is None:
        return SPAM_MODE
    if who not in last_mode and store is not None:
        last_mode[who] = chat.mode_for(await store.last_profile(who))
    return last_mode.get(who, SPAM_MODE)


def _mode() -> str:
    return chat.mode_for(cl.user_session.get("chat_profile"))


def _remember_mode(mode: str) -> None:
    user = cl.user_session.get("user")
    if user is not None:
        last_mode[user.identifier] = mode


@cl.on_chat_start
async def on_chat_start():
    """Never waits for a model: the input stays usable, and a message sent meanwhile waits for the load."""
    mode = _mode()
    _remember_mode(mode)
    cl.user_session.set("conversation", chat.Conversation())
    status = runtime.registry.status()[chat.MODEL_OF_MODE[mode]]
    if status["loading"]:
        await cl.Message(content=chat.loading_notice(mode)).send()
    elif not status["ready"]:
        await cl.Message(content=chat.unavailable_reply(runtime.registry.unavailable_message(chat.MODEL_OF_MODE[mode]))).send()
    if mode == ASSISTANT_MODE:
        await _send_settings(chat.DEFAULT_SETTINGS)


async def _send_settings(initial: dict) -> None:
    r, initial = chat.SETTINGS_RANGES, chat.panel_settings(initial)
    settings = await cl.ChatSettings([
        Slider(id=key, label=label, initial=initial[key], min=r[key][0], max=r[key][1], step=r[key][2])
        for key, label in (("temperature", "Temperature (0 = greedy)"), ("top_k", "Top-k (0 = off)"),
                           ("top_p", "Top-p (1 = off)"), ("max_new_tokens", "Max new tokens"))
    ]).send()
    cl.user_session.set("settings", settings)


@cl.on_chat_resume
async def on_chat_resume(thread: dict):
    """A thread opened from the sidebar: its mode, its Assistant settings and its conversation come back."""
    # Chainlit's own "Task manually stopped." can be saved after the app removed it (its writes race): not replayed.
    thread["steps"] = [st for st in thread.get("steps") or [] if not chat.is_chainlit_stop_notice(st)]
    mode = chat.resumed_mode(thread)
    cl.context.session.chat_profile = mode
    _remember_mode(mode)
    cl.user_session.set("conversation", chat.resumed_conversation(thread.get("steps") or []))
    if mode == ASSISTANT_MODE:
        meta = thread.get("metadata") if isinstance(thread.get("metadata"), dict) else {}
        await _send_settings(meta.get("settings") or meta.get("chat_settings") or {})


@cl.on_settings_update
async def on_settings_update(settings: dict):
    cl.user_session.set("settings", settings)


@cl.on_stop
async def on_stop():
    stream = cl.user_session.get("stream")
    if stream is not None:
        stream.cancel()  # Chainlit also cancels the handler's task; either way only this request stops
    # Chainlit posts "Task manually stopped." on its own before this hook; the stopped reply already says so.
    for message in reversed(cl.chat_context.get()):
        if message.author != "User" and message.content == chat.CHAINLIT_STOP_TEXT:
            await message.remove()
            break


@cl.on_chat_end
async def on_chat_end():
    """The socket closed (tab closed or reloaded, a new chat): unless it comes back within DISCONNECT_GRACE_S, stop
    what this chat still runs, so an answer nobody reads frees its slot; it is saved as stopped, like Stop."""
    session = cl.context.session
    socket_id = session.socket_id  # a reconnecting socket restores the session under a new id

    async def stop_if_gone():
        await asyncio.sleep(DISCONNECT_GRACE_S)
        task = session.current_task
        if session.socket_id == socket_id and task is not None and not task.done():
            task.cancel()

    task = asyncio.ensure_future(stop_if_gone())
    pending_stops.add(task)  # asyncio keeps only a weak reference to a task
    task.add_done_callback(pending_stops.discard)


@cl.on_message
async def on_message(message: cl.Message):
    try:
        if _mode() == SPAM_MODE:
            await _spam(message)
        else:
            await _assistant(message)
    except (chat.InputError, ContextOverflow) as e:
        await cl.Message(content=f"⚠️ {e}").send()
    except ModelUnavailable as e:
        await cl.Message(content=chat.unavailable_reply(e)).send()
    except EngineBusy as e:
        await cl.Message(content=f"⏳ The server is at capacity right now: {e}").send()


async def _spam(message: cl.Message):
    files = [e for e in (message.elements or []) if getattr(e, "path", None)]
    for f in files:
        status = cl.Message(content=f"⏳ Reading **{chat.literal(f.name)}**…")
        await status.send()

        async def progress(done, total, seconds_left, status=status, name=f.name):
            status.content = chat.progress_text(name, done, total, seconds_left)
            await status.update()

        try:
            result = await chat.classify_upload(runtime, f.name, Path(f.path).read_bytes(), progress)
        except (chat.InputError, EngineBusy, ModelUnavailable) as e:
            status.content = f"⚠️ {e}"
            await status.update()
            continue
        except asyncio.CancelledError:  # Stop: say so instead of leaving "⏳ ... Press Stop to cancel"
            status.content = f"⏹️ **{chat.literal(f.name)}**: stopped; nothing was saved."
            await status.update()
            raise
        status.content = result.summary
        status.elements = [cl.File(name=result.filename, content=result.csv_bytes, mime="text/csv", display="inline")]
        await status.update()
    if message.content.strip() or not files:
        verdict = await chat.spam_reply(runtime, message.content)
        reply = cl.Message(content=verdict.content, metadata=verdict.metadata)
        await reply.send()  # the verdict at once; the words behind it follow (one more forward pass)
        why = await chat.explain_reply(runtime, message.content)
        if why:
            reply.content += "\n\n" + why
            await reply.update()


async def _assistant(message: cl.Message):
    if message.elements:
        await cl.Message(content="ℹ️ Files are classified in **Spam check** mode; the assistant reads only your text.").send()
    settings = chat.generation_settings(cl.user_session.get("settings"))
    conversation = cl.user_session.get("conversation")
    if conversation is None:  # a message before on_chat_start finished
        conversation = chat.Conversation()
        cl.user_session.set("conversation", conversation)
    stream = await chat.open_answer(runtime, message.content, settings, conversation)
    cl.user_session.set("stream", stream)
    notice = None
    reply = cl.Message(content="", metadata=chat.answer_metadata(message.content))
    try:
        if stream.queue_position:
            notice = cl.Message(content=chat.busy_notice(stream.queue_position))
            await notice.send()
        async for piece in stream:
            if notice is not None:
                await notice.remove()
                notice = None
            await reply.stream_token(piece)
    except asyncio.CancelledError:  # Stop: the partial answer stays, finished (no "still writing" dot) and marked
        reply.content = chat.stopped_answer(reply.content)
        reply.metadata["stopped"] = True  # not history for the model, not training data
        await reply.send()  # (also ends the stream; update() would save it without a creation time: lost in history)
        raise
    finally:  # also on Stop, an engine error or a closed socket: free the slot, take the notice down
        stream.cancel()
        if notice is not None:
            await notice.remove()
    conversation.add(message.content.strip(), reply.content)
    if not reply.content.strip():
        reply.content = "_(no answer: the model stopped before writing anything)_"
        reply.metadata["stopped"] = True
    await reply.send()


# --------------------------------------------------------------------------- feedback on your own messages only
# Chainlit's PUT/DELETE /feedback trust the client's message and feedback ids; these run first and check that the
# message (and the feedback being changed) sits in a thread of the logged-in user.
async def owned_feedback_update(request: Request, update: UpdateFeedbackRequest, current_user: UserParam):
    fid = update.feedback.id  # the web client sends an id only for feedback the server gave it: it must be the user's
    thread_id = await store.thread_of_step(update.feedback.forId, current_user.identifier)
    if thread_id is None or (fid and not await store.owns_feedback(fid, current_user.identifier)):
        raise HTTPException(status_code=404, detail="There is no such message in your history.")
    update.feedback.threadId = thread_id  # never the client's word for it
    return await chainlit_server.update_feedback(request, update, current_user)


async def owned_feedback_delete(request: Request, payload: DeleteFeedbackRequest, current_user: UserParam):
    if not await store.owns_feedback(payload.feedbackId, current_user.identifier):
        raise HTTPException(status_code=404, detail="There is no such feedback in your history.")
    return await chainlit_server.delete_feedback(request, payload, current_user)


# --------------------------------------------------------------------------- uploads
async def upload_unless_empty(current_user: UserParam, session_id: str, file: UploadFile,
                              ask_parent_id: str | None = None):
    """Chainlit's upload, except that an empty file gets a 400 saying so, which the browser shows in its toast
    (Chainlit's own route fails on it with a 500, shown as a bare "Upload failed")."""
    if not await file.read(1):
        raise HTTPException(status_code=400, detail=chat.empty_upload_error(file.filename or "That file"))
    await file.seek(0)
    return await chainlit_server.upload_file(current_user, session_id, file, ask_parent_id)


# --------------------------------------------------------------------------- readiness for process managers
async def ready(request):
    """200 once both models are loaded, else 503 with each model's state and the command that creates it.
    Chainlit's own GET /health is the liveness check."""
    health = runtime.health()
    ok = health["status"] == "ok"
    return JSONResponse({"status": "ready" if ok else "not ready", **health}, status_code=200 if ok else 503)


# Chainlit's catch-all UI route would shadow a route appended now, and its own /feedback and /project/file would
# answer first: ours go to the front of the list.
if not any(getattr(r, "path", None) == "/ready" for r in fastapi_app.router.routes):
    fastapi_app.router.routes.insert(0, Route("/ready", ready, methods=["GET"]))
    fastapi_app.router.add_api_route(chainlit_server.router.prefix + "/project/file", upload_unless_empty, methods=["POST"])
    fastapi_app.router.routes.insert(0, fastapi_app.router.routes.pop())
    if store is not None:
        for endpoint, method in ((owned_feedback_update, "PUT"), (owned_feedback_delete, "DELETE")):
            # under `--root-path /chat` Chainlit serves /chat/feedback: ours must shadow that path
            fastapi_app.router.add_api_route(chainlit_server.router.prefix + "/feedback", endpoint, methods=[method])
            fastapi_app.router.routes.insert(0, fastapi_app.router.routes.pop())
