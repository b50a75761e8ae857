"""`python -m llm.serving.http`: serve the HTTP API (see `llm/serving/http/app.py`)."""
from __future__ import annotations

import argparse
import logging
import socket

from llm.argtypes import port_number, positive_int
from llm.serving.http.app import API_KEY_ENV, create_app
from llm.serving.limits import EngineLimits


def main(argv: list[str] | None = None) -> int:
    from llm.generate import add_runtime_args
    from llm.serving.runtime import Runtime

    defaults = EngineLimits()
    p = argparse.ArgumentParser(prog="python -m llm.serving.http",
                                description="OpenAI-compatible chat completions and an SMS spam classifier over HTTP, "
                                            "served by the continuous-batching engine.",
                                epilog=f"Auth: set ${API_KEY_ENV} to require the key on /v1/*. Models: "
                                       "$LLM_SPAM_CHECKPOINT, $LLM_INSTRUCT_CHECKPOINT (or the flags below).")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: %(default)s, loopback only)")
    p.add_argument("--port", type=port_number, default=8000, help="port (default: %(default)s)")
    p.add_argument("--spam-checkpoint", default=None, help="spam classifier checkpoint (default: $LLM_SPAM_CHECKPOINT or checkpoints/spam)")
    p.add_argument("--instruct-checkpoint", default=None, help="instruction model checkpoint (default: $LLM_INSTRUCT_CHECKPOINT or checkpoints/instruct)")
    p.add_argument("--max-running", type=int, default=None, help=f"sequences decoded together (default: $LLM_MAX_RUNNING or {defaults.max_running})")
    p.add_argument("--max-waiting", type=int, default=None, help=f"requests queued beyond those before 429 (default: $LLM_MAX_WAITING or {defaults.max_waiting})")
    p.add_argument("--kv-cache-mb", type=int, default=None, help=f"KV cache memory in MiB (default: $LLM_KV_CACHE_MB or {defaults.kv_cache_mb})")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--shutdown-timeout", type=float, default=10.0, help="seconds to wait for open requests on Ctrl-C/SIGTERM (default: %(default)s)")
    add_runtime_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        limits = EngineLimits.from_env(max_running=args.max_running, max_waiting=args.max_waiting,
                                       kv_cache_mb=args.kv_cache_mb)
    except ValueError as e:
        p.error(str(e))
    from llm.device import pick_device
    try:
        pick_device(args.device)  # an unknown or absent device stops here, not as two models that never load
    except ValueError as e:
        p.error(str(e))
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    import uvicorn
    try:  # bound before the models start loading: a port in use is one line, not a crash at exit
        sock = socket.create_server((args.host, args.port), family=socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    except OSError as e:
        p.error(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}): is another server using that port? "
                "Pick another --port, or a --host this machine has.")
    runtime = Runtime.from_env(args.spam_checkpoint, args.instruct_checkpoint, args.device, args.precision,
                               args.bpe_dir, limits=limits)
    config = uvicorn.Config(create_app(runtime), log_level="info", timeout_graceful_shutdown=args.shutdown_timeout)
    host = f"[{args.host}]" if ":" in args.host else args.host
    logging.getLogger("llm.api").info("listening on http://%s:%d (Ctrl-C to stop)", host, args.port)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
