"""Kubernetes' remote-command protocol over WebSocket, as pods/exec and pods/attach speak it
(streams.py relays it onto ApiService.PodExec): what the real kubectl (v5.channel.k8s.io only,
since 1.30) and the official Python client's `stream()` (v5, then v4) negotiate.

Every WebSocket message is one channel's data behind a one-byte channel number: 0 stdin (from
the client), 1 stdout, 2 stderr, 3 error (one metav1.Status JSON, the command's outcome, then
the server closes), 4 resize (terminal size JSON from the client). v5 adds 255: [255, n] says
the sender closed channel n (the client's end of stdin). The Python client sends stdin as text
frames, kubectl as binary ones: both carry the channel number first.

Pure logic, no I/O: option parsing (the URL's query, with Kubernetes' error wording), frame
coding and the final Status.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from kubelab.errors import BadRequest

V5, V4 = "v5.channel.k8s.io", "v4.channel.k8s.io"
PROTOCOLS = (V5, V4)
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255

_TRUE, _FALSE = ("1", "t", "T", "true", "TRUE", "True"), ("0", "f", "F", "false", "FALSE", "False", "")


def parse_bool(query, name: str, default: bool = False) -> bool:
    """A boolean query parameter as Go's strconv.ParseBool reads it (Kubernetes' query decoding)."""
    if name not in query:
        return default
    v = query.get(name, "")
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise BadRequest(f'{name}: invalid boolean value "{v}": strconv.ParseBool: parsing "{v}": invalid syntax')


@dataclass(frozen=True)
class Options:
    """PodExecOptions / PodAttachOptions from the request's query."""
    container: str
    command: tuple[str, ...]
    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool


def parse_options(query, *, attach: bool = False) -> Options:
    """The query of .../exec or .../attach; BadRequest in Kubernetes' words when unusable."""
    command = tuple(query.getall("command", ())) if hasattr(query, "getall") else tuple(query.get("command", ()))
    stdin, stdout = parse_bool(query, "stdin"), parse_bool(query, "stdout", True)
    stderr, tty = parse_bool(query, "stderr", True), parse_bool(query, "tty")
    if not attach and not command:
        raise BadRequest("you must specify at least one command for the container")
    if not (stdin or stdout or stderr):
        raise BadRequest("you must specify at least 1 of stdin, stdout, stderr")
    if tty and stderr:
        stderr = False  # a terminal has one output stream; Kubernetes drops stderr the same way
    return Options(query.get("container", ""), command, stdin, stdout, stderr, tty)


def select_protocol(header: str) -> str | None:
    """The first of the client's Sec-WebSocket-Protocol offers that is served, or None."""
    for p in (s.strip() for s in header.split(",")):
        if p in PROTOCOLS:
            return p
    return None


def frame(channel: int, data: bytes) -> bytes:
    return bytes((channel,)) + data


@dataclass(frozen=True)
class Message:
    """One client message: data for a channel, or (closed=True) the v5 close of a channel."""
    channel: int
    data: bytes = b""
    closed: bool = False


def decode(data: bytes | str, protocol: str) -> Message | None:
    """A client's frame; None for an empty frame (nothing to do). Text frames (the Python
    client) carry the channel as their first character."""
    if isinstance(data, str):
        if not data:
            return None
        return Message(ord(data[0]), data[1:].encode())
    if not data:
        return None
    if data[0] == CLOSE and protocol == V5:
        if len(data) != 2:
            raise BadRequest(f"close signal of {len(data)} bytes, two expected (255, channel)")
        return Message(data[1], closed=True)
    return Message(data[0], bytes(data[1:]))


def exit_status(code: int, command: tuple[str, ...] | list[str]) -> bytes:
    """The error channel's last word: Success, or Failure with reason NonZeroExitCode and the
    code in the ExitCode cause (kubectl exits with it; the Python client's returncode reads it)."""
    if code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}, separators=(",", ":")).encode()
    cmd = " ".join(command)
    return json.dumps({
        "metadata": {}, "status": "Failure",
        "message": f"command terminated with non-zero exit code: command '{cmd}' exited with {code}: ",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }, separators=(",", ":")).encode()


def error_status(reason: str, message: str, code: int) -> bytes:
    """A failure that is not the command's exit (the container stopped, the kubelet went away)."""
    return json.dumps({"metadata": {}, "status": "Failure", "message": message, "reason": reason,
                       "code": code}, separators=(",", ":")).encode()
