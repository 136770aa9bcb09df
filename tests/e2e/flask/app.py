"""A Flask app that keeps per-session state in process memory.

Each instance signs its session cookie with its own secret key (APP_SECRET), so a request
that reaches the wrong instance cannot read its session and starts a new one: exactly what
sticky sessions must prevent.
"""
import os
import uuid

from flask import Flask, session

app = Flask(__name__)
app.secret_key = os.environ["APP_SECRET"]
NAME = os.environ.get("APP_NAME", "flask")
visits = {}


@app.get("/")
def index():
    sid = session.get("sid")
    if sid is None or sid not in visits:
        sid = uuid.uuid4().hex
        session["sid"] = sid
        visits[sid] = 0
    visits[sid] += 1
    return f"visits={visits[sid]} instance={NAME}\n", 200, {"Content-Type": "text/plain"}


@app.get("/health")
def health():
    return "ok\n"
