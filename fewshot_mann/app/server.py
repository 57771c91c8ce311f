"""The web app: a Starlette application over one ``Session`` (docs/app.md).

Safe by default: every request needs the random token of the printed address (403 otherwise:
another site open in the same browser cannot drive the app); uploads are read into memory by
a streaming multipart parser with a limit per file, per request and on the number of files
(nothing spooled to disk, unlike Starlette's own form parser), then decoded by the CLI's
hardened reader (``images.decode_image``); the page can load only the checkpoints the command
line offered; a user error is one line (HTTP 400, ``{"error": ...}``) and any other failure
is one line too (500), with the server still running.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import traceback
from pathlib import Path
from urllib.parse import parse_qs

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from fewshot_mann.errors import UserError

PAGE = Path(__file__).resolve().parent / "page"
ASSETS = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
          "/app.css": ("app.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = [
    (b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"), (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                 b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
]
log = logging.getLogger("fewshot_mann.app")


@dataclasses.dataclass(frozen=True)
class Limits:
    """Upload bounds: bytes per file, bytes per request, files per request."""

    file_bytes: int = 32 * 2**20
    request_bytes: int = 512 * 2**20
    files: int = 2000


class UploadTooLarge(UserError):
    pass


class TokenGuard:
    """ASGI middleware: 403 unless the query has ``token=<the token>``; security headers on every answer."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0].encode("latin-1")

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        if not secrets.compare_digest(given, self.token):
            response = PlainTextResponse("forbidden: open the address printed by `fewshot-mann serve`, with its token",
                                         status_code=403)
            return await response(scope, receive, with_headers)
        return await self.app(scope, receive, with_headers)


def one_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0][:500] if lines else ""


def guarded(endpoint):
    """User errors -> 400 with the message; anything else -> 500 with one line (traceback in the server log)."""
    async def wrapper(request):
        try:
            return await endpoint(request)
        except UploadTooLarge as exc:
            return JSONResponse({"error": one_line(exc)}, status_code=413)
        except UserError as exc:
            return JSONResponse({"error": one_line(exc)}, status_code=400)
        except Exception as exc:  # noqa: BLE001 - the server keeps running; the page shows one line
            log.error("%s", traceback.format_exc())
            return JSONResponse({"error": f"internal error: {type(exc).__name__}: {one_line(exc)}"}, status_code=500)
    return wrapper


async def read_uploads(request, limits: Limits) -> tuple[dict[str, str], list[tuple[str, bytes]]]:
    """A multipart/form-data body into memory: ({field: text}, [(file name as sent, bytes)])."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UserError("expected a multipart/form-data upload")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limits.request_bytes:
        raise UploadTooLarge(f"upload of {int(length) / 2**20:.0f} MB is over the {limits.request_bytes / 2**20:.0f} MB limit")
    fields: dict[str, str] = {}
    files: list[tuple[str, bytes]] = []
    part = {"headers": {}, "field": b"", "value": b"", "data": bytearray()}

    def on_part_begin():
        part.update(headers={}, field=b"", value=b"", data=bytearray())

    def on_header_field(data, start, end):
        part["field"] += data[start:end]

    def on_header_value(data, start, end):
        part["value"] += data[start:end]

    def on_header_end():
        part["headers"][part["field"].lower()] = part["value"]
        part["field"], part["value"] = b"", b""

    def on_part_data(data, start, end):
        part["data"] += data[start:end]
        if len(part["data"]) > limits.file_bytes:
            _, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
            name = opts.get(b"filename", b"a field").decode("utf-8", "replace")
            raise UploadTooLarge(f"{name} is over the {limits.file_bytes / 2**20:.0f} MB limit per file; not read")

    def on_part_end():
        _, opts = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in opts:
            if len(files) >= limits.files:
                raise UploadTooLarge(f"more than {limits.files} files in one upload")
            files.append((opts[b"filename"].decode("utf-8", "replace"), bytes(part["data"])))
        elif len(part["data"]) <= 10_000:
            fields[name] = part["data"].decode("utf-8", "replace")

    parser = MultipartParser(params[b"boundary"], {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_part_data": on_part_data, "on_part_end": on_part_end})
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limits.request_bytes:
            raise UploadTooLarge(f"upload is over the {limits.request_bytes / 2**20:.0f} MB limit")
        parser.write(chunk)
    parser.finalize()
    return fields, files


def number(fields: dict, name: str, kind=int, default=None):
    text = (fields.get(name) or "").strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"{name} must be a number (got {text[:40]!r})") from None


async def json_body(request) -> dict:
    """A small JSON object from the request body; a malformed one is a user error."""
    try:
        body = json.loads((await request.body())[:10_000] or b"{}")
    except ValueError:
        raise UserError("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise UserError("the request body must be a JSON object")
    return body


def create_app(session, token: str, limits: Limits = Limits()) -> Starlette:
    """The app over ``session`` (``session.Session``); every request needs ``?token=<token>``."""
    async def asset(request):
        file, media = ASSETS[request.url.path]
        text = (PAGE / file).read_text(encoding="utf-8").replace("{{TOKEN}}", token)
        return Response(text, media_type=media)

    async def state(request):
        return JSONResponse({"models": session.models(), "model": session.info,
                             "support": session.support_view() if session.support else None})

    async def model(request):
        body = await json_body(request)
        return JSONResponse(await run_in_threadpool(session.choose_model, str(body.get("name", ""))))

    async def support(request):
        fields, files = await read_uploads(request, limits)
        adapt, finetune = number(fields, "adapt", int, 0), number(fields, "finetune", int, 0)
        return JSONResponse(await run_in_threadpool(session.give_support, files, adapt, finetune))

    async def cases(request):
        fields, files = await read_uploads(request, limits)
        threshold = number(fields, "threshold", float, None)
        if threshold is not None and not 0 <= threshold <= 1:
            raise UserError(f"threshold must be between 0 and 1 (got {threshold})")
        return JSONResponse(await run_in_threadpool(session.give_cases, files, threshold))

    async def reliability(request):
        body = await json_body(request)
        episodes = body.get("episodes", 200)
        if not isinstance(episodes, int) or isinstance(episodes, bool):
            raise UserError(f"episodes must be a whole number (got {str(episodes)[:40]!r})")
        return JSONResponse(session.start_reliability(episodes))

    async def job(request):
        return JSONResponse(dict(session.job))

    async def download(request):
        kind = request.url.path.rsplit(".", 1)[-1]
        text = session.answers_csv() if kind == "csv" else session.answers_json()
        media = "text/csv; charset=utf-8" if kind == "csv" else "application/json"
        return Response(text, media_type=media, headers={"content-disposition": f'attachment; filename="answers.{kind}"'})

    routes = [Route(path, guarded(asset)) for path in ASSETS] + [
        Route("/api/state", guarded(state)), Route("/api/model", guarded(model), methods=["POST"]),
        Route("/api/support", guarded(support), methods=["POST"]), Route("/api/cases", guarded(cases), methods=["POST"]),
        Route("/api/reliability", guarded(reliability), methods=["POST"]), Route("/api/job", guarded(job)),
        Route("/api/answers.csv", guarded(download)), Route("/api/answers.json", guarded(download)),
    ]
    app = Starlette(routes=routes)
    app.add_middleware(TokenGuard, token=token)
    return app
