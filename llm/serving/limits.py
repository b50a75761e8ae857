"""Every serving limit in one place: the chat app and the HTTP API read the same table.

Engine knobs come from the environment (the API's flags override them); input sizes are constants.
A difference between the app and the API is deliberate where it exists and says why.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class EngineLimits:
    """How much the generation engine does at once (env var in brackets)."""
    max_running: int = 32  # sequences decoded together in one batched step: KV slots [LLM_MAX_RUNNING]
    max_waiting: int = 64  # generation requests queued beyond those; more -> "busy" (429) [LLM_MAX_WAITING]
    kv_cache_mb: int = 2048  # memory for the KV cache; slots = min(max_running, this / one slot) [LLM_KV_CACHE_MB]
    prefill_chunk: int = 256  # prompt tokens prefilled per iteration, between decode steps [LLM_PREFILL_CHUNK]
    classify_batch: int = 32  # texts per classifier forward pass, across requests [LLM_CLASSIFY_BATCH]
    classify_tokens: int = 512  # and at most this many padded tokens (rows x the longest row) per pass: how long one
    # pass holds up the decode step (1,024 tokens: 0.22-0.27 s on a 2-core CPU with gpt2-mini) [LLM_CLASSIFY_TOKENS]
    classify_max_queued: int = 4096  # texts waiting for the classifier; more -> "busy" [LLM_CLASSIFY_MAX_QUEUED]

    @classmethod
    def from_env(cls, **overrides) -> "EngineLimits":
        """Defaults, then $LLM_<NAME>, then `overrides` (flags; None = not given). Refuses values below 1."""
        values = {}
        for f in fields(cls):
            raw = overrides.get(f.name)
            if raw is None:
                raw = os.environ.get(f"LLM_{f.name.upper()}")
            if raw is None:
                continue
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{f.name} must be a whole number (got {raw!r}; flag or $LLM_{f.name.upper()})") from None
            if value < 1:
                raise ValueError(f"{f.name} must be at least 1 (got {value}; flag or $LLM_{f.name.upper()})")
            values[f.name] = value
        return cls(**values)


# ----------------------------------------------------------------------------- input sizes (app and API)
MAX_MESSAGE_CHARS = 4_000  # one chat message: ~1,000 tokens, GPT-2's whole context
MAX_NEW_TOKENS = 1_024  # upper bound of the API's max_tokens (the whole context); the app's slider stops at 512
DEFAULT_MAX_NEW_TOKENS = 256
MAX_TEXT_CHARS = 10_000  # one message to classify (the classifier reads its first max_length tokens anyway)
MAX_TEXTS = 500  # messages classified per request (API) or per paste (app)
MAX_EXPLAIN_TEXTS = 16  # messages explained per request: each is up to 129 rows (the message, then without each word)
MAX_STOP = 4  # stop sequences per request, as in OpenAI's API
MAX_STOP_CHARS = 64
MAX_SEED = 2**63 - 1  # sampling seeds are 0 .. 2^63 - 1 (torch's generator takes 64 bits)

# The app only: a paste holds many messages, and files are uploaded rather than posted as JSON.
PASTE_MAX_CHARS = 20_000  # one paste in Spam check; longer: upload a file
FILE_MAX_ROWS = 20_000  # rows classified per uploaded file
FILE_MAX_BYTES = 5 * 1024 * 1024  # also the upload limit in .chainlit/config.toml
HISTORY_EXCHANGES = 1  # earlier (question, answer) pairs the app carries into the next prompt
DISCONNECT_GRACE_S = 10.0  # a closed tab, reload or new chat stops that chat's answer or upload after this long,
# unless its socket came back (a network blip): the API stops a request at once when its client goes (no reconnects)

# The API only: it receives whole conversations in one JSON body.
CLIENT_CHECK_S = 0.5  # how often a non-streamed request checks that its client is still connected (gone: cancelled)
MAX_BODY_BYTES = 2 * 1024 * 1024  # any request body; larger -> 413 before parsing
BODY_READ_TIMEOUT_S = 30.0  # longest wait for the next piece of a request body; slower -> 408 (a stalled client
# would otherwise hold its connection for ever)
MAX_MESSAGES = 64  # messages per chat request
MAX_CONTENT_PARTS = 64  # text parts in one message's content list (their text together: MAX_MESSAGE_CHARS)
