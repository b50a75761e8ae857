"""Several people at once in the chat app: N browser sessions ask the Assistant at the same moment.

    flock /tmp/cpu-heavy.lock python benchmarks/app_sessions.py [--sessions 1 8]

Starts `chainlit run app.py --headless` on a free 127.0.0.1 port with the trained checkpoints
(checkpoints/spam and checkpoints/instruct, or $LLM_SPAM_CHECKPOINT / $LLM_INSTRUCT_CHECKPOINT), opens N
headless Chromium sessions (Debian's /usr/bin/chromium through Playwright), switches each to Assistant
(default settings: greedy, at most 256 new tokens), then presses Enter in all of them together. For each session it records the time until
its answer is complete (the Stop button gone) and the answer's tokens. Results:
benchmarks/results/app_sessions.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
if (ROOT.parent / "shared/data/gpt2").is_dir():  # offline tokenizer files beside the checkout
    os.environ.setdefault("LLM_BPE_DIR", str(ROOT.parent / "shared/data/gpt2"))
CHROMIUM = "/usr/bin/chromium"
ASSISTANT_MSG = '.step[data-step-type="assistant_message"]'
QUESTIONS = ["Write a long story about a dragon who learns to bake bread.", "Describe a day in the life of a lighthouse keeper.",
             "Explain how a bicycle works, step by step.", "Write a letter to a friend about your summer holiday.",
             "Tell me about the history of the printing press.", "Describe the water cycle in detail.",
             "Write a short play about two robots meeting on the moon.", "Explain why the sky is blue to a child."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, log) -> subprocess.Popen:
    app_root = Path(tempfile.mkdtemp(prefix="app_sessions_"))  # chainlit writes .files/ there
    for name in (".chainlit/config.toml", "chainlit.md"):
        (app_root / name).parent.mkdir(parents=True, exist_ok=True)
        (app_root / name).write_bytes((ROOT / name).read_bytes())
    subprocess.run(["cp", "-r", str(ROOT / "public"), str(app_root / "public")], check=True)
    env = {**os.environ, "CHAINLIT_APP_ROOT": str(app_root), "LLM_DEVICE": "cpu",
           "LLM_SPAM_CHECKPOINT": os.environ.get("LLM_SPAM_CHECKPOINT", str(ROOT / "checkpoints/spam")),
           "LLM_INSTRUCT_CHECKPOINT": os.environ.get("LLM_INSTRUCT_CHECKPOINT", str(ROOT / "checkpoints/instruct")),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "chainlit", "run", str(ROOT / "app.py"), "--headless", "--host",
                             "127.0.0.1", "--port", str(port)], cwd=app_root, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("the app did not become ready (are checkpoints/spam and checkpoints/instruct there? make app)")


def run_sessions(browser, url: str, n: int, tokenizer) -> list[dict]:
    from playwright.sync_api import expect

    contexts = [browser.new_context(base_url=url, viewport={"width": 1000, "height": 700}) for _ in range(n)]
    try:
        pages = []
        for ctx in contexts:
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            page.goto("/")
            page.locator("#chat-profiles").click()
            page.locator('[data-test="select-item:Assistant"]').click()
            expect(page.locator("#chat-settings-open-modal")).to_be_visible()  # the Assistant session is up
            pages.append(page)
        for i, page in enumerate(pages):
            page.locator("#chat-input").fill(QUESTIONS[i % len(QUESTIONS)])
        start = {}
        for i, page in enumerate(pages):
            page.locator("#chat-input").press("Enter")
            start[i] = time.perf_counter()
        done: dict[int, float] = {}
        deadline = time.monotonic() + 600
        while len(done) < n and time.monotonic() < deadline:
            for i, page in enumerate(pages):
                if i not in done and page.locator(ASSISTANT_MSG).count() and page.locator("#stop-button").count() == 0:
                    done[i] = time.perf_counter()
            time.sleep(0.05)
        out = []
        for i, page in enumerate(pages):
            text = page.locator(ASSISTANT_MSG).last.inner_text()
            tokens = len(tokenizer.encode(text))
            seconds = done.get(i, float("nan")) - start[i]
            out.append({"session": i, "seconds": round(seconds, 2), "tokens": tokens, "tok_s": round(tokens / seconds, 1)})
        return out
    finally:
        for ctx in contexts:
            ctx.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, nargs="+", default=[1, 8])
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/app_sessions"))
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    from llm.tokenizer import get_tokenizer

    tokenizer = get_tokenizer()
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / "app_sessions_server.log", "w")
    server = start_app(port, log)
    results = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
            for n in args.sessions:
                results[n] = run_sessions(browser, f"http://127.0.0.1:{port}", n, tokenizer)
                print(n, "sessions:", results[n], flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(20)
    lines = [f"# {', '.join(map(str, args.sessions))} Assistant sessions at once in the app ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/app_sessions.py --sessions {' '.join(map(str, args.sessions))}`; the app's default "
             "settings (greedy, at most 256 new tokens); time from Enter to the complete answer, per browser session.", "",
             "| sessions | seconds per answer (min / max) | tokens per answer (mean) | tokens/s per user (mean) | tokens/s all users |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for n, rs in results.items():
        secs = [r["seconds"] for r in rs]
        lines.append(f"| {n} | {min(secs):.1f} / {max(secs):.1f} | {sum(r['tokens'] for r in rs) / n:.0f} | "
                     f"{sum(r['tok_s'] for r in rs) / n:.1f} | {sum(r['tokens'] for r in rs) / max(secs):.1f} |")
    Path(args.out).with_suffix(".json").write_text(json.dumps({str(k): v for k, v in results.items()}, indent=1))
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
