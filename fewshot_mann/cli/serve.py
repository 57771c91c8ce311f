"""``fewshot-mann serve``: the rare-case workflow as a local web page (fewshot_mann/app, docs/app.md).

    fewshot-mann serve [--host 127.0.0.1] [--port 8765] [--checkpoint NAME_OR_FILE ...] [--no-browser]

Prints the page's address, with its random token, and opens it in the browser. Needs the
``app`` extra (``pip install "fewshot-mann[app]"``).
"""
from __future__ import annotations

import argparse
import secrets
import socket
import sys

from fewshot_mann.cli.common import add_flag, add_shared_flags, parse_checked, run_guarded, set_threads
from fewshot_mann.errors import UserError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _port(value) -> str | None:
    return None if 1 <= value <= 65535 else f"--port must be between 1 and 65535 (got {value})"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewshot-mann serve", description="a local web page for the rare-case workflow",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (another than localhost exposes the "
                                                        "page, behind its token, to the network)")
    add_flag(p, "--port", type=int, default=8765, problem=_port)
    p.add_argument("--checkpoint", nargs="+", default=None, metavar="NAME_OR_FILE",
                   help="the model(s) the page offers, the first loaded at start, besides the bundled ones (default: "
                        "the bundled 'photos' model, else reports/checkpoints/photos-5way.pt, else omniglot-5way)")
    p.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    add_shared_flags(p, "device", "threads")
    return p


def main(argv=None) -> int:
    return run_guarded(_serve, argv)


def _serve(argv) -> int:
    args = parse_checked(parser(), argv)
    try:
        import uvicorn

        from fewshot_mann.app.server import create_app
    except ImportError as exc:
        raise UserError(f"fewshot-mann serve needs the app extra ({exc.name} is missing): "
                        "pip install \"fewshot-mann[app]\"") from exc
    from fewshot_mann.app.session import REPO_PHOTO_MODEL, Session, default_checkpoint
    from fewshot_mann.engine.bundled import registry
    from fewshot_mann.engine.trainer import resolve_device

    set_threads(args.threads)
    first = args.checkpoint or [default_checkpoint()]
    extra = [str(REPO_PHOTO_MODEL)] if REPO_PHOTO_MODEL.is_file() else []
    session = Session(first + sorted(registry()) + extra, device=resolve_device(args.device))
    session.choose_model(first[0])  # a bad checkpoint fails here, as one line
    try:  # a busy port is one line too, before anything is printed
        with socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET) as s:
            s.bind((args.host, args.port))
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc}); choose another --port") from exc
    token = secrets.token_urlsafe(24)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{args.port}/?token={token}"
    print(f"fewshot-mann: the page is at {url}\n(model {first[0]}; Ctrl-C stops the server)", flush=True)
    if args.host not in LOCAL_HOSTS:
        print(f"warning: listening on {args.host}: anyone on the network with this address can use the page",
              file=sys.stderr)
    if not args.no_browser:
        import threading
        import webbrowser
        threading.Timer(1.0, webbrowser.open, args=(url,)).start()
    uvicorn.run(create_app(session, token), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
