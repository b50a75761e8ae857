"""Start the real chat app (`python -m chainlit run app.py --headless`) for a test, with tiny checkpoints made
here; used by the browser tests (tests/e2e) and the history security tests (tests/test_history_app.py)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoints(root: Path) -> tuple[Path, Path]:
    """A tiny random spam classifier and a tiny random instruction model, in the formats the loaders accept."""
    from llm.checkpoint import save_checkpoint
    from llm.config import GPTConfig
    from llm.model import GPT, GPTClassifier
    from llm.prompt import template_metadata
    from llm.spam import LABELS

    tiny = GPTConfig(n_layer=2, n_head=2, n_embd=32, n_positions=256)
    torch.manual_seed(0)
    spam = save_checkpoint(GPTClassifier(tiny, 2).eval(), root / "spam",
                           metadata={"labels": list(LABELS), "max_length": 64})
    instruct = save_checkpoint(GPT(tiny).eval(), root / "instruct", metadata={"prompt_template": template_metadata()})
    return spam, instruct


@contextmanager
def running_app(work: Path, env: dict[str, str] | None = None, checkpoints: tuple[Path, Path] | None = None):
    """Yields the app's base URL once GET /health answers (the models may still be loading); stops it after.

    The app runs in `work/app`, a copy of the committed look and config (Chainlit writes .files/ there, and the
    default history database lands in work/app/data/chat.db)."""
    spam, instruct = checkpoints or make_checkpoints(work / "checkpoints")
    app_root = work / "app"
    app_root.mkdir(parents=True, exist_ok=True)
    for name in (".chainlit/config.toml", "chainlit.md", "public"):
        src, dst = ROOT / name, app_root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    port = free_port()
    full_env = {**os.environ, "CHAINLIT_APP_ROOT": str(app_root), "LLM_SPAM_CHECKPOINT": str(spam),
                "LLM_INSTRUCT_CHECKPOINT": str(instruct), "LLM_DEVICE": "cpu",
                "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    log_path = work / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "chainlit", "run", str(ROOT / "app.py"), "--headless",
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=app_root, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"chainlit exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    assert r.status == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"chainlit did not answer in 60 s:\n{log_path.read_text()}")
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
