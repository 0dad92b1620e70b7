"""
The ``gourmet`` command: check a configuration file, write one to start
from, hash a console password, say which Gourmet this is, and have a
running Gourmet reload its file.  ``twistd -n gourmet`` runs Gourmet.

What a command has to say goes to standard output; an error is one line on
standard error and exit status 1 (2 for a command line argparse refuses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import urllib.error
import urllib.request
from importlib import resources
from typing import Any, Optional, Sequence

import twisted
from gourmet import __version__
from gourmet.admin import passwords
from gourmet.config.model import DEFAULT_CONFIG_PATH, GourmetConfig

__all__ = ["main", "starter_config", "version_line"]

#: The pid file ``twistd`` writes when not told otherwise.
DEFAULT_PIDFILE = "twistd.pid"
#: Seconds ``gourmet reload --admin`` waits for the console's answer.
RELOAD_TIMEOUT = 30.0


class CommandError(Exception):
    """
    What stops a command: its message is the one line on standard error,
    after ``gourmet: ``.
    """


def version_line() -> str:
    """
    Which Gourmet this is, and on which Twisted and Python.
    """
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return f"gourmet {__version__} (Twisted {twisted.__version__}, {python})"


def starter_config() -> str:
    """
    The commented configuration ``gourmet init`` writes.
    """
    starter = resources.files("gourmet.config").joinpath("starter.toml")
    return starter.read_text(encoding="utf-8")


def _say(line: str) -> None:
    """
    A command's answer, on standard output: its interface (Gourmet itself
    logs with twisted.logger).
    """
    sys.stdout.write(line + "\n")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def check_file(path: str, reactor: Any) -> GourmetConfig:
    """
    Check the configuration file at ``path`` as ``twistd gourmet`` does at
    start-up, without listening or opening anything else: the Twisted
    installed, the file, the files it names (certificates made into the
    OpenSSL contexts start-up serves), and every listener's endpoint
    string, parsed by the code start-up parses it with.  A ``systemd:``
    endpoint is left to start-up: its socket exists only in the process
    systemd starts.

    :raises ConfigError: for the first problem, as start-up says it.
    :raises TwistedMismatch: when the installed Twisted lacks a name
        Gourmet relies on.
    """
    # Imported here, not above: the other commands need none of Twisted's
    # reactor or of Gourmet's service.
    from gourmet._twisted.check import check_twisted
    from gourmet.building import (
        admin_endpoint,
        check_shareable,
        endpoint_for,
        proxy_endpoints,
        tls_contexts,
        tls_endpoints,
    )
    from gourmet.config.endpoints import default_backlog
    from gourmet.config.load import load_config
    from gourmet.tls.store import CertificateStore

    check_twisted(log_fallbacks=False)
    config = load_config(path)
    check_shareable(config)
    tls_contexts(config, CertificateStore())
    backlog = config.frontend.backlog or default_backlog()
    admin = admin_endpoint(config)
    listeners = proxy_endpoints(config) + tls_endpoints(config)
    listeners += [
        (f"streams[{index}].listen", stream.listen)
        for index, stream in enumerate(config.streams)
    ]
    for key, description in listeners + ([admin] if admin else []):
        if not description.lower().startswith("systemd:"):
            endpoint_for(config, key, description, backlog, reactor)
    return config


def _summary(config: GourmetConfig) -> str:
    """
    What a checked configuration runs, in the ``ok`` line.
    """
    parts = [
        _plural(len(config.upstreams), "upstream"),
        _plural(len(config.frontend.locations), "location"),
        "listening on " + ", ".join(config.frontend.endpoints),
    ]
    frontend = config.frontend
    if frontend.tls_listen:
        served = _plural(len(frontend.certificates), "certificate")
        if frontend.acme is not None:
            served += ", ACME's for " + ", ".join(frontend.acme.domains)
        parts.append(f"TLS on {', '.join(frontend.tls_listen)} ({served})")
    if config.streams:
        parts.append(
            _plural(len(config.streams), "TCP stream")
            + " on "
            + ", ".join(stream.listen for stream in config.streams)
        )
    if config.admin.listen is not None:
        parts.append(f"admin console on {config.admin.listen}")
    if config.demo.listen:
        parts.append("demo servers on " + ", ".join(config.demo.listen))
    if frontend.workers > 1:
        parts.append(f"{frontend.workers} worker processes")
    return ", ".join(parts)


def _check(options: argparse.Namespace) -> None:
    from twisted.internet import reactor

    from gourmet._twisted.check import TwistedMismatch
    from gourmet.config.load import ConfigError

    try:
        config = check_file(options.file, reactor)
    except (ConfigError, TwistedMismatch) as error:
        raise CommandError(str(error)) from None
    _say(f"gourmet: {options.file}: ok ({_summary(config)})")


def _init(options: argparse.Namespace) -> None:
    text = starter_config()
    if options.file is None:
        sys.stdout.write(text)
        return
    try:
        with open(options.file, "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise CommandError(f"{options.file}: exists already; not overwritten") from None
    except OSError as error:
        raise CommandError(f"{options.file}: cannot write: {error.strerror}") from None
    _say(f"gourmet: wrote {options.file}; check it with: gourmet check {options.file}")


def _hash_password(options: argparse.Namespace) -> int:
    return passwords.run(options, "gourmet hash-password")


def _read_pid(path: str) -> int:
    try:
        with open(path, encoding="ascii") as file:
            text = file.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise CommandError(f"cannot read the pid file {path}: {reason}") from None
    if not text.isdigit() or int(text) < 1:
        raise CommandError(f"{path}: not a process id: {text[:40]!r}")
    return int(text)


def _is_gourmet(pid: int) -> bool:
    """
    Whether process ``pid`` runs Gourmet, as far as ``/proc`` tells: a pid
    file left behind may name a process that reused the number, and SIGHUP
    stops most programs.  True where ``/proc`` cannot tell.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            command = file.read()
    except OSError:  # No /proc, or no such process: os.kill will say.
        return True
    return b"gourmet" in command


def _reload_by_signal(path: str) -> None:
    pid = _read_pid(path)
    if not _is_gourmet(pid):
        raise CommandError(
            f"process {pid} (from {path}) is not Gourmet: is the pid file stale?"
        )
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise CommandError(
            f"no process {pid} (from {path}): is Gourmet running?"
        ) from None
    except OSError as error:
        raise CommandError(f"cannot signal process {pid}: {error.strerror}") from None
    _say(f"gourmet: sent SIGHUP to process {pid}: its log says how the reload went")


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise CommandError(f"cannot read the token file {path}: {reason}") from None


def _reload_by_api(admin: str, token_file: str) -> None:
    url = admin.rstrip("/") + "/api/reload"
    request = urllib.request.Request(
        url,
        data=b"",
        method="POST",
        headers={"Authorization": f"Bearer {_read_token(token_file)}"},
    )
    # Straight to the console: never through an HTTP proxy of the
    # environment's (http_proxy), which would see the token.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=RELOAD_TIMEOUT) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        raise CommandError(_refusal(url, error)) from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or error
        raise CommandError(f"reload: cannot reach {url}: {reason}") from None
    _say(f"gourmet: reloaded: {answer['reloaded']['description']}")


def _refusal(url: str, error: urllib.error.HTTPError) -> str:
    """
    The line for the console's refusal: a file that does not load is its
    error line as start-up gives it; anything else, the status and why.
    """
    try:
        description = str(json.load(error)["description"])
    except (ValueError, KeyError, TypeError):
        description = error.reason
    if error.code == 400:
        return description.removeprefix("gourmet: ")
    return f"reload: {url}: {error.code} {description}"


def _reload(options: argparse.Namespace) -> None:
    if options.admin is not None:
        if options.token_file is None:
            options.usage_error("--admin needs --token-file")
        _reload_by_api(options.admin, options.token_file)
    elif options.token_file is not None:
        options.usage_error("--token-file goes with --admin")
    else:
        _reload_by_signal(options.pidfile or DEFAULT_PIDFILE)


Commands = Any  # argparse's _SubParsersAction, private to it


def _add_check(commands: Commands) -> None:
    check = commands.add_parser(
        "check",
        help="check a configuration file as start-up would, listening on nothing",
    )
    check.add_argument("file", nargs="?", default=DEFAULT_CONFIG_PATH)
    check.set_defaults(run=_check)


def _add_init(commands: Commands) -> None:
    init = commands.add_parser(
        "init", help="write a commented configuration to start from"
    )
    init.add_argument(
        "file", nargs="?", help="where to write it (never over a file); stdout if none"
    )
    init.set_defaults(run=_init)


def _add_hash_password(commands: Commands) -> None:
    hash_password = commands.add_parser(
        "hash-password",
        help="make a password hash for [admin.users]",
        description=passwords.DESCRIPTION,
    )
    passwords.add_arguments(hash_password)
    hash_password.set_defaults(run=_hash_password)


def _add_reload(commands: Commands) -> None:
    reload = commands.add_parser(
        "reload",
        help="have a running Gourmet load its configuration file again",
        description="Send SIGHUP to the Gourmet a pid file names, or ask its"
        " admin console (POST /api/reload) with the API token.",
    )
    how = reload.add_mutually_exclusive_group()
    how.add_argument(
        "--pidfile", help=f"twistd's pid file (default: {DEFAULT_PIDFILE})"
    )
    how.add_argument("--admin", metavar="URL", help="the console, http://HOST:PORT")
    reload.add_argument(
        "--token-file", metavar="FILE", help="a file holding admin.token (with --admin)"
    )
    reload.set_defaults(run=_reload, usage_error=reload.error)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gourmet",
        description="Gourmet's tools; `twistd -n gourmet --config FILE` runs it.",
    )
    parser.add_argument("--version", action="version", version=version_line())
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands.required = True
    for add in (_add_check, _add_init, _add_hash_password, _add_reload):
        add(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    Run the ``gourmet`` command.

    :param argv: its arguments, without the program's name; ``sys.argv``'s
        when None.
    :return: the exit status.
    """
    options = _parser().parse_args(argv)
    try:
        status: Optional[int] = options.run(options)
    except CommandError as error:
        sys.stderr.write(f"gourmet: {error}\n")
        return 1
    return status or 0
