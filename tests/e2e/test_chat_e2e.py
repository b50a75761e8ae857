"""End to end: `chainlit run app.py --headless` with small checkpoints made here, driven in a real
headless Chromium (Debian's /usr/bin/chromium through Playwright; no browser download).

Fresh server: a message typed the moment the page opens (models possibly still loading) is answered.
Assistant: a message gets a reply that the browser sees grow piece by piece (streamed); four sessions
at once all stream (the engine batches them). Spam check: "WINNER!! ..." gets a verdict with a
probability; a 2,000-row upload shows its progress, then the labelled CSV. A screenshot of each lands in
$LLM_E2E_SCREENSHOTS (default: the test's tmp dir); LLM_E2E_REAL_CHECKPOINTS=1 uses the trained
checkpoints/spam and checkpoints/instruct instead of tiny random ones (for the README's screenshots).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app_server import running_app  # noqa: E402

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]  # fonts/CDN fail fast offline
ASSISTANT_MSG = '.step[data-step-type="assistant_message"]'
USER_MSG = '.step[data-step-type="user_message"]'
SPAM_TEXT = "WINNER!! Claim your £900 prize now, call 09061701461"
VERDICT = re.compile(r"(Spam|Likely spam|Unsure|Ham) — (\d{1,3}\.\d%|> 99\.9%|< 0\.1%) spam probability")


EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"  # so screenshots show the 🔴/🟢 users see


def ensure_chromium() -> str:
    if Path(CHROMIUM).exists() and (Path(EMOJI_FONT).exists() or os.geteuid() != 0):
        return CHROMIUM
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{CHROMIUM} missing and not root to apt-get it: apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium", "fonts-noto-color-emoji"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.skip(f"could not install chromium ({' '.join(cmd)} failed): {r.stderr[-500:]}")
    return CHROMIUM


@pytest.fixture(scope="module")
def chainlit_url(tmp_path_factory, tokenizer):  # `tokenizer` skips the module when the BPE files are unavailable
    pytest.importorskip("playwright")
    ensure_chromium()
    work = tmp_path_factory.mktemp("e2e")
    checkpoints = None
    if os.environ.get("LLM_E2E_REAL_CHECKPOINTS"):  # screenshots with the trained models: checkpoints/{spam,instruct}
        checkpoints = ROOT / "checkpoints/spam", ROOT / "checkpoints/instruct"
    with running_app(work, {"LLM_HISTORY": "1"}, checkpoints) as url:  # history on: SQLite in work/app/data/
        yield url


@pytest.fixture(scope="module")  # module scope: sync Playwright's loop must not outlive this module (async tests elsewhere)
def chromium_browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=ensure_chromium(), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def chat_page(chromium_browser, chainlit_url):
    from playwright.sync_api import expect

    ctx = chromium_browser.new_context(base_url=chainlit_url, viewport={"width": 1280, "height": 860})
    ctx.set_default_timeout(20_000)
    expect.set_options(timeout=20_000)
    yield ctx.new_page()
    ctx.close()


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the models did not load in 60 s"
        time.sleep(0.1)


RECORD_RENDERS = """() => { window.__renders = []; window.__times = [];
    new MutationObserver(() => { const m = [...document.querySelectorAll('%s')].pop();
        if (m) { const t = m.innerText.trim();
                 if (t && window.__renders.at(-1) !== t) { window.__renders.push(t); window.__times.push(Date.now()); } } })
      .observe(document.body, {subtree: true, childList: true, characterData: true}); }""" % ASSISTANT_MSG


def wait_for_answer(page, settle_s: float = 2.0) -> None:
    """Wait until the last answer is complete: the Stop button gone and its text non-empty and unchanged for `settle_s`.

    The Stop button alone is not enough: Chainlit shows it only after the "first_interaction" event, which it sends
    from a background task once the new thread's queued writes reach the history store; when those writes are slow
    (CI's disk), the first tokens stream while the button is not there yet."""
    from playwright.sync_api import expect

    deadline = time.monotonic() + 60
    last, since = None, time.monotonic()
    while True:
        expect(page.locator("#stop-button")).to_have_count(0, timeout=max(1, deadline - time.monotonic()) * 1000)
        text = page.locator(ASSISTANT_MSG).last.inner_text(timeout=max(1, deadline - time.monotonic()) * 1000)
        now = time.monotonic()
        if text != last or not text.strip():
            last, since = text, now
        elif now - since >= settle_s:
            return
        assert now < deadline, "the answer was still growing after 60 s"
        time.sleep(0.1)


def select_profile(page, name: str, confirm: bool) -> None:
    from playwright.sync_api import expect

    page.locator("#chat-profiles").click()
    page.locator(f'[data-test="select-item:{name}"]').click()
    if confirm:  # only asked once the user has sent something
        page.locator("#confirm").click()
    expect(page.locator("#chat-profiles")).to_contain_text(name)


def send(page, text: str) -> None:
    from playwright.sync_api import expect

    box = page.locator("#chat-input")
    expect(box).to_be_enabled()
    box.fill(text)
    box.press("Enter")


def test_a_message_typed_the_moment_the_page_opens_is_answered(chat_page, chainlit_url):
    """First test on a fresh server: no waiting for /ready, the message is sent as soon as the box takes it."""
    from playwright.sync_api import expect

    page = chat_page
    page.goto("/")
    send(page, SPAM_TEXT)
    expect(page.locator(USER_MSG).last).to_contain_text("WINNER!!")
    expect(page.locator(ASSISTANT_MSG).last).to_contain_text(VERDICT)
    wait_ready(chainlit_url)


def test_assistant_streams_then_spam_check_verdict(chat_page, chainlit_url, tmp_path):
    from playwright.sync_api import expect

    wait_ready(chainlit_url)  # streaming is checked on a loaded model (a loading notice would be the first render)

    shots = Path(os.environ.get("LLM_E2E_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = chat_page
    page.goto("/")
    expect(page.locator("#chat-input")).to_be_visible()

    select_profile(page, "Assistant", confirm=False)
    expect(page.locator("#chat-settings-open-modal")).to_be_visible()  # the Assistant session has started
    # Record every text the reply bubble shows while it grows: streaming means several distinct renders.
    page.evaluate(RECORD_RENDERS)
    send(page, "Give me three tips for staying healthy.")
    expect(page.locator(USER_MSG).last).to_contain_text("three tips")
    expect(page.locator(ASSISTANT_MSG).last).not_to_be_empty()
    wait_for_answer(page)
    renders = page.evaluate("window.__renders")
    assert len(renders) >= 3, renders  # the text appeared piece by piece, not in one go
    assert renders[-1].startswith(renders[0][:5]), renders
    page.screenshot(path=shots / "assistant.png")

    select_profile(page, "Spam check", confirm=True)
    expect(page.locator(USER_MSG)).to_have_count(0)  # really a new chat
    expect(page.locator("#chat-settings-open-modal")).to_have_count(0)  # the Spam check session has started
    page.get_by_text("A prize text").click()  # the Spam check starter: sends SPAM_TEXT in the new session
    expect(page.locator(USER_MSG).last).to_contain_text("WINNER!!")
    verdict = page.locator(ASSISTANT_MSG).last
    expect(verdict).to_contain_text(VERDICT)
    expect(verdict).to_contain_text("Why")  # the words behind the verdict follow it
    page.screenshot(path=shots / "spam_check.png")
    assert (shots / "spam_check.png").stat().st_size > 10_000


def test_four_assistant_sessions_stream_at_once(chromium_browser, chainlit_url, tmp_path):
    """Four people ask at the same moment: every one of them sees an answer grow piece by piece."""
    from playwright.sync_api import expect

    contexts = [chromium_browser.new_context(base_url=chainlit_url, viewport={"width": 1000, "height": 700})
                for _ in range(4)]
    try:
        pages = [c.new_page() for c in contexts]
        for page in pages:
            page.goto("/")
            select_profile(page, "Assistant", confirm=False)
            expect(page.locator("#chat-settings-open-modal")).to_be_visible()
            page.evaluate(RECORD_RENDERS)
        for i, page in enumerate(pages):  # fill all, then press Enter in each as fast as possible
            page.locator("#chat-input").fill(f"Tell me a long story about dragon number {i}.")
        for page in pages:
            page.locator("#chat-input").press("Enter")
        windows = []  # (first render, last render) of each answer, in the browser's wall-clock ms
        for page in pages:
            wait_for_answer(page)
            renders, times = page.evaluate("window.__renders"), page.evaluate("window.__times")
            assert len(renders) >= 3, renders
            windows.append((times[0], times[-1]))
        # while one answer was still growing, the others were growing too (the engine batched them)
        overlapping = sum(any(a < d and c < b for j, (c, d) in enumerate(windows) if j != i) for i, (a, b) in enumerate(windows))
        assert overlapping >= 2, f"the four answers did not run at the same time: {windows}"
        pages[-1].screenshot(path=tmp_path / "four_sessions.png")
    finally:
        for c in contexts:
            c.close()


def test_a_2000_row_upload_shows_progress(chat_page, tmp_path):
    from playwright.sync_api import expect

    shots = Path(os.environ.get("LLM_E2E_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    rows = ["text"] + [f'"Message {i}: WINNER!! claim your prize, call 0906{i:07d}"' if i % 5 == 0
                       else f'"Message {i}: see you at {i % 12 + 1} tonight"' for i in range(2000)]
    upload = tmp_path / "inbox.csv"
    upload.write_text("\n".join(rows) + "\n")
    page = chat_page
    page.goto("/")
    select_profile(page, "Spam check", confirm=False)  # a new page opens in the user's last mode
    send(page, "see you at 7")  # the session is up once its verdict is back
    expect(page.locator(ASSISTANT_MSG).last).to_contain_text("spam probability")
    page.evaluate(RECORD_RENDERS)
    for attempt in range(3):  # after a profile switch the composer can re-render once and drop the first pick
        page.locator("#upload-button-input").set_input_files(str(upload))
        try:
            expect(page.locator("#message-composer")).to_contain_text("inbox.csv", timeout=5_000)  # the attachment chip
            break
        except AssertionError:
            if attempt == 2:
                raise
    expect(page.locator("#chat-submit")).to_be_enabled()
    page.locator("#chat-submit").click()
    expect(page.locator(ASSISTANT_MSG).last).to_contain_text("classified", timeout=60_000)
    page.screenshot(path=shots / "upload_progress.png")  # mid-way with a real model; done already with a tiny one
    expect(page.locator(ASSISTANT_MSG).last).to_contain_text("2,000 messages classified", timeout=120_000)
    expect(page.get_by_role("link", name="inbox-labelled.csv")).to_be_visible()
    expect(page.locator(USER_MSG).last.locator(".bg-accent")).to_be_hidden()  # no empty text bubble under the file card
    renders = page.evaluate("window.__renders")
    progress = [r for r in renders if re.search(r"[\d,]+ / 2,000 messages classified", r)]
    assert len(progress) >= 2, renders  # the count moved while it ran
    page.screenshot(path=shots / "upload_done.png")


def test_history_survives_a_reload_and_takes_a_thumbs_down(chat_page, chainlit_url, tmp_path):
    """History on (SQLite, the local single-user identity): an Assistant chat, a reload, the thread opened from
    the sidebar shows the messages and the Assistant mode again; a thumbs-down with a comment is stored."""
    from playwright.sync_api import expect

    wait_ready(chainlit_url)
    shots = Path(os.environ.get("LLM_E2E_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page = chat_page
    page.goto("/")
    select_profile(page, "Assistant", confirm=False)
    expect(page.locator("#chat-settings-open-modal")).to_be_visible()
    question = "What is the capital of France? (history test)"
    send(page, question)
    expect(page.locator(USER_MSG).last).to_contain_text("history test")
    wait_for_answer(page)
    answer = page.locator(ASSISTANT_MSG).last
    expect(answer).not_to_be_empty()
    answer.hover()
    answer.locator("button:has(.lucide-thumbs-down)").click()
    page.locator("textarea").last.fill("Paris, please.")
    page.locator("#submit-feedback").click()
    expect(answer.locator("button:has(.lucide-thumbs-down)")).to_be_visible()

    page.reload()
    expect(page.locator("#chat-input")).to_be_visible()
    expect(page.locator("#chat-profiles")).to_contain_text("Assistant")  # a reload keeps the user's mode
    if not page.locator("#thread-history").is_visible():
        page.locator("#sidebar-trigger-button").click()
    thread = page.locator("#thread-history a", has_text="history test").first
    expect(thread).to_be_visible()
    thread.click()
    expect(page.locator(USER_MSG).first).to_contain_text("history test")
    expect(page.locator(ASSISTANT_MSG).last).not_to_be_empty()
    page.screenshot(path=shots / "history.png")
    expect(page.locator("#chat-input")).to_be_enabled()  # resumed: the user can go on in the same thread
