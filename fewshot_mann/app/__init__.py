"""``fewshot-mann serve``: the rare-case workflow as a local web page (docs/app.md).

``session.py`` holds the user's model, support set and answers in memory and calls the engine;
``server.py`` is the Starlette app (token, upload limits, one-line errors); ``page/`` is the
hand-written HTML, CSS and JavaScript it serves (no assets from anywhere else).
"""
