"""
Reading Gourmet's TOML configuration file into the frozen model of
:mod:`gourmet.config.model`.

Every problem, from a TOML syntax error to an upstream that a location names
but nobody defined, is a :class:`ConfigError` that names the file, the key
path and what was expected, in one line::

    gourmet.toml: upstreams.backend.servers[1].weight: expected a whole number
    from 0 to 1000, got -1

Defaults are not repeated here: a key the file leaves out is left out of the
call that builds its configuration object, so the default in
:mod:`gourmet.config.model` (or :func:`gourmet.config.origin.parse_origin`) applies.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import operator
import os
import re
import sys
from pathlib import Path
from typing import (
    Any,
    Callable,
    Collection,
    Dict,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    TypeVar,
)

from gourmet.admin import passwords
from gourmet.config.endpoints import (
    check_tls_files,
    is_loopback_host,
    tls_files,
    with_files_from,
)
from gourmet.config.model import (
    MAX_WEIGHT,
    AcmeConfig,
    AdminConfig,
    ClusterConfig,
    DemoConfig,
    FrontendConfig,
    GourmetConfig,
    HealthCheckConfig,
    LocationConfig,
    LogConfig,
    StreamConfig,
    UpstreamConfig,
    UpstreamServerConfig,
)
from gourmet.config.origin import parse_origin
from gourmet.discovery.provider import OptionError, ProvidedServer
from gourmet.discovery.registry import (
    PROVIDER_NAMES,
    PROVIDERS,
    load_balancer_plugins,
)
from gourmet.etcd.options import BadOption, credentials_of, endpoints_of
from gourmet.http.rules import (
    OWNED_REQUEST,
    OWNED_RESPONSE,
    HeaderRules,
    RuleError,
    Template,
    check_not_owned,
    compile_template,
    header_name,
)
from gourmet.tls.certificates import (
    Certificate,
    CertificateError,
    certificates_in,
    load_certificate,
    read_file,
)
from gourmet.upstream.balancers import BALANCERS

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

__all__ = ["ConfigError", "load_config", "parse_config"]

_T = TypeVar("_T")


class ConfigError(Exception):
    """
    A configuration Gourmet cannot run with.

    :ivar source: the file (or other source) the configuration came from.
    :ivar key: the dotted key path of the offending value, such as
        ``upstreams.backend.servers[1].weight``; empty when the problem is
        the file as a whole.
    :ivar message: what was expected, and what was found instead.
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(source, key, message)
        self.source = source
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        # Callers print this after "gourmet: " as a single log line.
        return " ".join(f"{where}: {self.message}".splitlines())


class _Invalid(Exception):
    """
    A value of the wrong type or out of range, raised by a :data:`Kind` that does
    not know where the value came from; the table reading it adds the key.

    :ivar at: the path below the key, such as ``[2]`` for an array's item.
    """

    def __init__(self, message: str, at: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.at = at


#: Checks one TOML value and returns what the configuration keeps of it.
Kind = Callable[[Any], _T]


def _show(value: object) -> str:
    """
    ``value`` as it would be written in TOML, or what it is when that would
    be long.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    return str(value)


def _suggestion(name: str, candidates: Collection[str]) -> str:
    matches = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f"; did you mean {matches[0]!r}?" if matches else ""


_BARE_KEY = re.compile(r"\A[A-Za-z0-9_-]+\Z")


def _join(prefix: str, name: str) -> str:
    """
    The key path of ``name`` within the table at ``prefix``, quoted as TOML
    quotes keys (an upstream may be called ``api.v1``).
    """
    if not _BARE_KEY.match(name):
        name = json.dumps(name, ensure_ascii=False)
    return f"{prefix}.{name}" if prefix else name


def _is_whole(value: object) -> bool:
    # TOML booleans are ints to Python, but nobody means 1 by true.
    return isinstance(value, int) and not isinstance(value, bool)


def _whole(low: int, high: Optional[int] = None) -> Kind[int]:
    """
    A whole number from ``low`` to ``high`` (no upper limit when ``None``).
    """
    bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"

    def whole(value: Any) -> int:
        if _is_whole(value) and low <= value and (high is None or value <= high):
            return int(value)
        raise _Invalid(f"expected a whole number {bounds}, got {_show(value)}")

    return whole


def _number(low: float, inclusive: bool = False) -> Kind[float]:
    """
    A finite number, whole or not, above ``low`` (or equal to it when
    ``inclusive``).
    """
    bounds = f"of at least {low:g}" if inclusive else f"above {low:g}"
    in_range = operator.ge if inclusive else operator.gt

    def number(value: Any) -> float:
        numeric = _is_whole(value) or isinstance(value, float)
        if numeric and math.isfinite(value) and in_range(value, low):
            return float(value)
        raise _Invalid(f"expected a number {bounds}, got {_show(value)}")

    return number


#: Most worker processes ``[server] workers`` may ask for.
MAX_WORKERS = 256


def cores() -> int:
    """
    The cores this process may run on (its CPU affinity, else the machine's).
    """
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _workers(value: Any) -> int:
    """
    ``[server] workers``: a count of worker processes, or ``"auto"``, one
    per core.
    """
    if value == "auto":
        return cores()
    if _is_whole(value) and 1 <= value <= MAX_WORKERS:
        return int(value)
    raise _Invalid(
        f'expected a whole number from 1 to {MAX_WORKERS} or "auto", got {_show(value)}'
    )


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Invalid(f"expected true or false, got {_show(value)}")


def _string(value: Any) -> str:
    if isinstance(value, str) and value:
        return value
    raise _Invalid(f"expected a non-empty string, got {_show(value)}")


def _choice(options: Collection[str]) -> Kind[str]:
    """
    One of ``options``, which are read when a value is checked: a registry
    such as :data:`BALANCERS` may grow after this module is imported.
    """

    def choice(value: Any) -> str:
        if isinstance(value, str) and value in options:
            return value
        names = ", ".join(repr(option) for option in sorted(options))
        raise _Invalid(f"expected one of {names}, got {_show(value)}")

    return choice


def _array(kind: Kind[Any], into: Callable[[List[Any]], Any] = tuple) -> Kind[Any]:
    """
    An array whose items are each of ``kind``, collected by ``into``.
    """

    def array(value: Any) -> Any:
        if not isinstance(value, list):
            raise _Invalid(f"expected an array, got {_show(value)}")
        items = []
        for index, item in enumerate(value):
            try:
                items.append(kind(item))
            except _Invalid as error:
                raise _Invalid(error.message, f"[{index}]{error.at}") from None
        return into(items)

    return array


_SIZE = re.compile(r"\A([0-9]+)([kKmMgG]?)\Z")
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def _size(value: Any) -> int:
    """
    A number of bytes, as a whole number or as nginx writes sizes: ``"512"``,
    ``"10k"``, ``"1m"``, ``"1g"`` (powers of 1024).
    """
    if _is_whole(value) and value >= 0:
        return int(value)
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None:
        raise _Invalid(
            'expected a whole number of bytes or a size such as "512", "10k",'
            f' "1m" or "1g", got {_show(value)}'
        )
    return int(match[1]) * _SIZE_UNITS[match[2].lower()]


def _regex(value: Any) -> re.Pattern[str]:
    text = _string(value)
    try:
        return re.compile(text)
    except re.error as error:
        raise _Invalid(f"not a regular expression: {error}") from None


def _file_path(base_dir: str) -> Kind[str]:
    """
    A file name, made absolute against ``base_dir`` (the configuration
    file's directory) so that it does not depend on where twistd runs.
    """

    def file_path(value: Any) -> str:
        return os.path.abspath(os.path.join(base_dir, _string(value)))

    return file_path


def _existing_file(base_dir: str) -> Kind[str]:
    resolve = _file_path(base_dir)

    def existing_file(value: Any) -> str:
        path = resolve(value)
        if not os.path.isfile(path):
            raise _Invalid(f"no such file: {path}")
        return path

    return existing_file


def _read_text(path: str) -> str:
    """
    The text of the UTF-8 file at ``path``.
    """
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise _Invalid(f"cannot read {path}: {reason}") from None


def _text_file(base_dir: str) -> Kind[str]:
    """
    An existing file that can be read as UTF-8 (start-up reads it whole).
    """
    existing = _existing_file(base_dir)

    def text_file(value: Any) -> str:
        path = existing(value)
        _read_text(path)
        return path

    return text_file


def _log_target(base_dir: str) -> Kind[str]:
    """
    ``"stdout"``, ``"off"``, or a file (which need not exist yet).
    """
    resolve = _file_path(base_dir)

    def log_target(value: Any) -> str:
        text = _string(value)
        return text if text in ("stdout", "off") else resolve(text)

    return log_target


# The shape gourmet.demo's parse_origin reads, without a scheme and with the
# port it would otherwise default to 80.
_HOST_PORT = re.compile(r"\A(?:\[[^\]]*\]|[^\s:/\[\]]+):[0-9]+\Z")


def _demo_address(value: Any) -> str:
    """
    A ``host:port`` on loopback: the demo servers answer anyone who asks.
    """
    text = _string(value)
    try:
        host = parse_origin(text).host if _HOST_PORT.match(text) else ""
    except ValueError:
        host = ""
    if not is_loopback_host(host):
        raise _Invalid(
            'expected "host:port" with a loopback host (127.x.x.x, [::1] or'
            f" localhost) and a port from 1 to 65535, got {_show(value)}"
        )
    return text


def _endpoint(base_dir: str) -> Kind[str]:
    """
    A Twisted endpoint string; an ``ssl:`` one's files are found from
    ``base_dir`` (as other file names are) and read: a certificate, and the
    private key that goes with it.
    """

    def endpoint(value: Any) -> str:
        description = with_files_from(_string(value), base_dir)
        try:
            check_tls_files(description)
        except ValueError as error:
            raise _Invalid(str(error)) from None
        return description

    return endpoint


def _plain_endpoint(value: Any) -> str:
    """
    A Twisted endpoint string for Gourmet to serve TLS on: not ``ssl:``,
    whose TLS would be Twisted's, with one certificate.
    """
    text = _string(value)
    if tls_files(text):
        raise _Invalid(
            "expected a plain endpoint such as tcp:443 (Gourmet adds TLS with"
            f" [[server.certificates]]), got {_show(value)}"
        )
    return text


#: What RFC 6797 requires of a Strict-Transport-Security value: max-age.
_HSTS_MAX_AGE = re.compile(r'(?:\A|;)\s*max-age\s*=\s*"?[0-9]+"?\s*(?:;|\Z)', re.I)


def _hsts(value: Any) -> str:
    """
    A ``Strict-Transport-Security`` header value: printable ASCII with a
    ``max-age`` directive.
    """
    text = _string(value)
    if not (text.isascii() and text.isprintable() and _HSTS_MAX_AGE.search(text)):
        raise _Invalid(
            "expected a Strict-Transport-Security value such as"
            f' "max-age=31536000; includeSubDomains", got {_show(value)}'
        )
    return text


def _admin_listen(base_dir: str) -> Kind[Optional[str]]:
    """
    A Twisted endpoint string, or ``"off"``.
    """
    endpoint = _endpoint(base_dir)

    def admin_listen(value: Any) -> Optional[str]:
        return None if _string(value) == "off" else endpoint(value)

    return admin_listen


_MIN_TOKEN = 16
_TOKEN = re.compile(r"\A[!-~]+\Z")


def _token(value: Any) -> str:
    """
    A bearer token: it goes in an HTTP header, so printable ASCII only.
    """
    if isinstance(value, str) and len(value) >= _MIN_TOKEN and _TOKEN.match(value):
        return value
    # Never show the value: it is a secret, and errors go to logs.
    raise _Invalid(
        f"expected a string of at least {_MIN_TOKEN} characters, printable ASCII"
        " without spaces"
    )


#: Where systemd puts a service's credentials (``LoadCredential=``).
CREDENTIALS_DIRECTORY = "$CREDENTIALS_DIRECTORY"


def _secret_path(value: Any, base_dir: str) -> str:
    """
    A secret file's path: ``$CREDENTIALS_DIRECTORY/name`` is in the
    directory systemd made for the service's credentials.
    """
    text = _string(value)
    if text.startswith(CREDENTIALS_DIRECTORY + "/"):
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory:
            raise _Invalid(
                "$CREDENTIALS_DIRECTORY is not set: give the file with"
                " LoadCredential= in the service's unit, or another path"
            )
        return os.path.join(directory, text[len(CREDENTIALS_DIRECTORY) + 1 :])
    return _existing_file(base_dir)(text)


def _private(path: str) -> None:
    """
    Refuse a secret that others may read, as OpenSSH refuses a key file.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise _Invalid(f"cannot read {path}: {error.strerror or error}") from None
    if mode & 0o077:
        raise _Invalid(
            f"{path} may be read by others (mode {mode & 0o777:04o}):"
            f" make it its owner's only (chmod 600 {path})"
        )


def _token_file(base_dir: str) -> Kind[str]:
    """
    A file holding a token, which may end with a newline, and which only
    its owner may read.
    """

    def token_file(value: Any) -> str:
        path = _secret_path(value, base_dir)
        _private(path)
        text = _read_text(path)
        try:
            return _token(text.strip())
        except _Invalid as error:
            raise _Invalid(f"{path}: {error.message}") from None

    return token_file


def _user_name(value: Any) -> str:
    """
    A name Basic authentication can carry: no colon, no control characters.
    """
    name = _string(value)
    if ":" in name or not name.isprintable():
        raise _Invalid(
            f"expected a user name without ':' or control characters, got {_show(name)}"
        )
    return name


def _password_hash(value: Any) -> str:
    text = _string(value)
    try:
        passwords.check_hash(text)
    except ValueError as error:
        raise _Invalid(str(error)) from None
    return text


_HOST_NAME = re.compile(r"\A(?:[^\s:\[\]]+|\[[0-9A-Fa-f:.]+\])\Z")


def _network(value: Any) -> str:
    text = _string(value)
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _Invalid(
            f"expected an IP address or network such as 10.0.0.0/8, got {_show(value)}"
        ) from None
    return text


def _console_host(value: Any) -> str:
    """
    A host name (or bracketed IPv6 address) without a port, as the console
    compares a request's Host with it (:func:`gourmet.http.hosts.host_name`).
    """
    text = _string(value)
    if not _HOST_NAME.match(text):
        raise _Invalid(
            f"expected a host name or [IPv6 address] without a port, got {_show(text)}"
        )
    return text.lower()


def _upstream_name(defined: Collection[str]) -> Kind[str]:
    def upstream_name(value: Any) -> str:
        name = _string(value)
        if name not in defined:
            names = ", ".join(repr(each) for each in defined)
            raise _Invalid(f"no upstream named {name!r}; defined: {names}")
        return name

    return upstream_name


class _Table:
    """
    One TOML table being read: reads that know the table's key path, and
    remember every key asked for (present or not) so that :meth:`done` can
    refuse the others, suggesting the nearest valid one.
    """

    def __init__(self, value: object, key: str, source: str) -> None:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table, got {_show(value)}")
        self._data: Dict[str, Any] = value
        self._key = key
        self._source = source
        self._asked: Set[str] = set()

    def key(self, name: str) -> str:
        return _join(self._key, name)

    def has(self, name: str) -> bool:
        """
        Whether the key ``name`` is present (not asking for it).
        """
        return name in self._data

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self._source, self.key(name), message)

    def _check(self, name: str, kind: Kind[_T], value: Any) -> _T:
        """
        ``value`` checked by ``kind``, with errors at ``name``.
        """
        try:
            return kind(value)
        except _Invalid as error:
            raise ConfigError(
                self._source, self.key(name) + error.at, error.message
            ) from None

    def _convert(self, name: str, kind: Kind[_T]) -> _T:
        return self._check(name, kind, self._data[name])

    def _present(self, names: Tuple[str, ...], at: str) -> List[str]:
        """
        Which of ``names``, ways of giving one setting, are present: at most
        one may be, or there is an error at ``at``.
        """
        self._asked.update(names)
        present = [each for each in names if each in self._data]
        if len(present) > 1:
            listed = " or ".join(repr(each) for each in names)
            raise self.error(at, f"give either {listed}, not both")
        return present

    def _missing(self, name: str, expected: str) -> ConfigError:
        """
        The error for a required key that is absent: most often it is there,
        misspelt, and saying so helps more than saying it is missing.
        """
        unknown = [each for each in self._data if each not in self._asked]
        # Valid keys not read yet are among the unknown: the high cutoff
        # keeps them (preserve_host for servers) from passing for typos.
        typo = difflib.get_close_matches(name, unknown, n=1, cutoff=0.8)
        if typo:
            return self.error(typo[0], f"unknown key; did you mean {name!r}?")
        return self.error(name, f"missing key: expected {name!r} ({expected})")

    def fields(self, **kinds: Kind[Any]) -> Dict[str, Any]:
        """
        Read the keys of ``kinds`` that are present, each checked by its
        kind, as keyword arguments for a configuration class.
        """
        self._asked.update(kinds)
        return {
            name: self._convert(name, kind)
            for name, kind in kinds.items()
            if name in self._data
        }

    def only(self, **kinds: Kind[Any]) -> Dict[str, Any]:
        """
        Like :meth:`fields`, for a table that has no other keys.
        """
        values = self.fields(**kinds)
        self.done()
        return values

    def require(
        self, name: str, kind: Kind[_T], expected: str, alias: Optional[str] = None
    ) -> _T:
        """
        Read a key that must be present, under ``name`` or else ``alias``
        (another spelling of it, as the original Gourmet had).
        """
        spellings = (name,) if alias is None else (name, alias)
        present = self._present(spellings, at=name)
        if not present:
            raise self._missing(name, expected)
        return self._convert(present[0], kind)

    def either(self, at: str, **kinds: Kind[_T]) -> Optional[_T]:
        """
        The value of whichever key of ``kinds`` is present, each a way of
        giving one setting (a value, or a file holding it); ``None`` when none
        is.  When more than one is, the error is at ``at``.
        """
        present = self._present(tuple(kinds), at)
        return self._convert(present[0], kinds[present[0]]) if present else None

    def table(self, name: str, expected: Optional[str] = None) -> _Table:
        """
        The table under ``name``: an empty one when it is absent, unless
        ``expected`` describes it as required.
        """
        self._asked.add(name)
        if name in self._data:
            return _Table(self._data[name], self.key(name), self._source)
        if expected is not None:
            raise self._missing(name, expected)
        return _Table({}, self.key(name), self._source)

    def tables(self, name: str, required: bool = True) -> List[_Table]:
        """
        The array of tables (``[[name]]``) under ``name``: required, and not
        empty, unless not ``required`` (then it may be absent).
        """
        key = self.key(name)
        expected = f"at least one [[{key}]] table"
        if not required and name not in self._data:
            self._asked.add(name)
            return []
        value = self.require(name, lambda value: value, expected)
        if not isinstance(value, list) or not value:
            raise self.error(
                name, f"expected an array of tables, {expected}, got {_show(value)}"
            )
        return [
            _Table(item, f"{key}[{index}]", self._source)
            for index, item in enumerate(value)
        ]

    def items(self) -> List[Tuple[str, _Table]]:
        """
        Every key of a table whose keys are names, each with its table.
        """
        self._asked.update(self._data)
        return [
            (name, _Table(value, self.key(name), self._source))
            for name, value in self._data.items()
        ]

    def entries(self, name: Kind[str], kind: Kind[_T]) -> List[Tuple[str, _T]]:
        """
        Every key of a table whose keys are names, checked by ``name``, each
        with its value, checked by ``kind``.
        """
        self._asked.update(self._data)
        return [
            (self._check(each, name, each), self._convert(each, kind))
            for each in self._data
        ]

    def done(self) -> None:
        """
        Refuse the keys nothing asked for.
        """
        for name in self._data:
            if name not in self._asked:
                raise self.error(name, "unknown key" + _suggestion(name, self._asked))


#: Passive health settings: an upstream's defaults, and each server's own.
_HEALTH: Dict[str, Kind[Any]] = {
    "max_fail": _whole(0),
    "fail_timeout": _number(0),
}


def _proxy_protocol(value: Any) -> Optional[str]:
    if value is False:
        return None
    if value in ("v1", "v2"):
        return str(value)
    raise _Invalid(f'expected "v1", "v2" or false, got {_show(value)}')


#: The request parts ``hash_key`` may name.
_HASH_KEY = re.compile(r"\A(?:ip|uri|(?:header|cookie):[!#$%&'*+.^_`|~0-9A-Za-z-]+)\Z")


def _hash_key(value: Any) -> str:
    if isinstance(value, str) and _HASH_KEY.match(value):
        return value
    raise _Invalid(
        'expected "ip", "uri", "header:NAME" or "cookie:NAME", got ' + _show(value)
    )


def _balance_factor(value: Any) -> float:
    numeric = _is_whole(value) or isinstance(value, float)
    if numeric and math.isfinite(value) and (value == 0 or value >= 1):
        return float(value)
    raise _Invalid(f"expected 0 (off) or a number of at least 1, got {_show(value)}")


def _cookie_name(value: Any) -> str:
    if isinstance(value, str) and re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", value):
        return value
    raise _Invalid(f"expected a cookie name (an HTTP token), got {_show(value)}")


def _secret(value: Any) -> str:
    if isinstance(value, str) and len(value) >= 16:
        return value
    raise _Invalid(f"expected a string of at least 16 characters, got {_show(value)}")


_UPSTREAM: Dict[str, Kind[Any]] = {
    "balancer": _choice(BALANCERS),
    "provider": _choice(PROVIDER_NAMES),
    "connect_timeout": _number(0),
    "read_timeout": _number(0),
    "tries": _whole(0),
    "fail_status": _array(_whole(100, 599), frozenset),
    "retry_status": _array(_whole(100, 599), frozenset),
    "panic_threshold": _whole(0, 100),
    "preserve_host": _boolean,
    "redirect_rewrite": _boolean,
    "keepalive": _whole(0),
    "keepalive_timeout": _number(0, inclusive=True),
    "ewma_decay": _number(0),
    "header_timeout": _number(0),
    "proxy_protocol": _proxy_protocol,
    "slow_start": _number(0, inclusive=True),
    "hash_key": _hash_key,
    "hash_balance_factor": _balance_factor,
    "sticky_cookie": _cookie_name,
    "sticky_secret": _secret,
}

_UPSTREAM_NAME = re.compile(r"\A[A-Za-z0-9_.-]+\Z")


def _server(table: _Table, defaults: Dict[str, Any]) -> UpstreamServerConfig:
    path = table.require("path", _string, 'an address such as "127.0.0.1:9001"')
    options = table.fields(tls_verify=_boolean)
    values = {**defaults, **table.fields(weight=_whole(0, MAX_WEIGHT), **_HEALTH)}
    table.done()
    try:
        origin = parse_origin(path, **options)
    except ValueError as error:
        raise table.error("path", str(error)) from None
    return UpstreamServerConfig(path=path, origin=origin, **values)


def _check_path(value: Any) -> str:
    path = _string(value)
    if not path.startswith("/") or not path.isascii() or any(c <= " " for c in path):
        raise _Invalid(f'expected a path such as "/health", got {_show(value)}')
    return path


def _health_check(table: _Table) -> HealthCheckConfig:
    values = table.fields(
        type=_choice(("http", "tcp")),
        path=_check_path,
        interval=_number(0),
        timeout=_number(0),
        rise=_whole(1),
        fall=_whole(1),
        expect=_array(_whole(100, 599), frozenset),
        host=_string,
    )
    table.done()
    if values.get("type") == "tcp":
        for name in ("path", "expect", "host"):
            if name in values:
                raise table.error(name, 'a type = "tcp" check sends no request')
    if values.get("expect") == frozenset():
        raise table.error("expect", "expected at least one status")
    check = HealthCheckConfig(**values)
    if check.timeout > check.interval:
        raise table.error(
            "timeout",
            f"expected at most interval ({check.interval:g}), got {check.timeout:g}",
        )
    return check


def _upstream(name: str, table: _Table, base_dir: str) -> UpstreamConfig:
    values = table.fields(**_UPSTREAM)
    defaults = table.fields(**_HEALTH)
    provider = values.get("provider", "static")
    servers: Tuple[UpstreamServerConfig, ...] = ()
    if provider == "static":
        servers = tuple(_server(each, defaults) for each in table.tables("servers"))
    elif table.has("servers"):
        raise table.error(
            "servers",
            f'provider = "{provider}" finds the servers: remove them, or'
            ' set provider = "static"',
        )
    else:
        values["provider_options"] = _provider_options(
            table, PROVIDERS[provider], base_dir
        )
    if table.has("health_check"):
        values["health_check"] = _health_check(table.table("health_check"))
    table.done()
    _check_hash(table, values)
    return UpstreamConfig(name=name, servers=servers, **values, **defaults)


def _provider_options(table: _Table, factory: Any, base_dir: str) -> Any:
    """
    The options a provider's factory makes of its keys in ``table``.
    """
    raw = table.fields(**{key: _as_written for key in factory.keys})
    try:
        return factory.options(raw, Path(base_dir))
    except OptionError as error:
        raise table.error(error.key, error.message) from None


def _as_written(value: Any) -> Any:
    return value


def _check_hash(table: _Table, values: Dict[str, Any]) -> None:
    """
    ``hash_key`` goes with ``balancer = "hash"``, and only with it.
    """
    hashing = values.get("balancer") == "hash"
    if hashing and "hash_key" not in values:
        raise table.error(
            "hash_key",
            'missing key: balancer = "hash" needs one:'
            ' "ip", "uri", "header:NAME" or "cookie:NAME"',
        )
    for name in ("hash_key", "hash_balance_factor"):
        if not hashing and name in values:
            raise table.error(name, 'only for balancer = "hash"')


def _upstreams(document: _Table, base_dir: str) -> Tuple[UpstreamConfig, ...]:
    load_balancer_plugins()
    table = document.table(
        "upstreams", "a table of upstreams, such as [upstreams.backend]"
    )
    upstreams = table.items()
    if not upstreams:
        raise document.error(
            "upstreams", "expected at least one [upstreams.NAME] table"
        )
    for name, _ in upstreams:
        if not _UPSTREAM_NAME.match(name):
            raise table.error(
                name, "expected a name of letters, digits, '_', '-' and '.'"
            )
    return tuple(_upstream(name, each, base_dir) for name, each in upstreams)


def _location(table: _Table, upstreams: Collection[str]) -> LocationConfig:
    pattern = table.require("location", _regex, "a regular expression", "path")
    upstream = table.require(
        "upstream", _upstream_name(upstreams), "an upstream's name", "http_pass"
    )
    values = table.fields(host=_string, pass_match=_boolean)
    for rules, owned in _HEADER_RULES:
        if table.has(rules):
            values[rules] = _header_rules(table.table(rules), owned)
    table.done()
    return LocationConfig(pattern=pattern, upstream=upstream, **values)


#: A location's header rules, each with the headers they may not name.
_HEADER_RULES = (
    ("request_headers", OWNED_REQUEST),
    ("response_headers", OWNED_RESPONSE),
)


def _template(value: Any) -> Template:
    if value == "":
        raise _Invalid("expected a value; to delete a header, name it in remove")
    try:
        return compile_template(_string(value))
    except RuleError as error:
        raise _Invalid(str(error)) from None


def _templates(value: Any) -> Tuple[Template, ...]:
    """
    One value to add, or an array of them.
    """
    if isinstance(value, list):
        templates: Tuple[Template, ...] = _array(_template)(value)
        return templates
    return (_template(value),)


def _rule_name(
    owned: Dict[bytes, str], named: Dict[bytes, str], rule: str
) -> Kind[str]:
    """
    A header name in the rule ``rule`` (``set``, ``add``, ``remove``): not
    one Gourmet owns, nor one another rule has named (``named``, by its
    lower-case name).
    """

    def rule_name(value: Any) -> str:
        try:
            name = header_name(_string(value))
            check_not_owned(name, owned)
        except RuleError as error:
            raise _Invalid(str(error)) from None
        lower = name.lower()
        if lower in named:
            raise _Invalid(
                f"{value} is named in {named[lower]} already: a header is set,"
                " added or removed, by one rule"
            )
        named[lower] = rule
        return str(value)

    return rule_name


def _header_rules(table: _Table, owned: Dict[bytes, str]) -> Optional[HeaderRules]:
    """
    ``request_headers`` or ``response_headers``: ``set`` and ``add``, tables
    of header names and values, and ``remove``, an array of names.
    """
    named: Dict[bytes, str] = {}
    set_rules = [
        (name.encode(), template)
        for name, template in table.table("set").entries(
            _rule_name(owned, named, "set"), _template
        )
    ]
    add_rules = [
        (name.encode(), template)
        for name, templates in table.table("add").entries(
            _rule_name(owned, named, "add"), _templates
        )
        for template in templates
    ]
    removed = table.fields(remove=_array(_rule_name(owned, named, "remove")))
    table.done()
    remove = tuple(name.encode() for name in removed.get("remove", ()))
    if not (set_rules or add_rules or remove):
        return None
    return HeaderRules(tuple(set_rules), tuple(add_rules), remove)


def _certificate(table: _Table, base_dir: str) -> Certificate:
    """
    A ``[[server.certificates]]`` table: its files, read and checked.
    """
    path = _file_path(base_dir)
    files = {
        "cert": table.require("cert", path, "the certificate's PEM file"),
        "key": table.require("key", path, "the private key's PEM file"),
    }
    table.done()
    try:
        return load_certificate(files["cert"], files["key"])
    except CertificateError as error:
        raise table.error(error.part, str(error)) from None


_HTTPS_URL = re.compile(r"\Ahttps://[^\s/?#]+(?:[/?][!-~]*)?\Z")


def _https_url(value: Any) -> str:
    """
    An ``https://`` URL: RFC 8555 has ACME spoken over HTTPS only.
    """
    text = _string(value)
    if not _HTTPS_URL.match(text):
        raise _Invalid(
            "expected an https:// URL such as"
            f' "https://acme-v02.api.letsencrypt.org/directory", got {_show(value)}'
        )
    return text


_EMAIL = re.compile(r"\A[^\s@:,<>]+@[A-Za-z0-9.-]+\Z")


def _email(value: Any) -> str:
    text = _string(value)
    if not (text.isascii() and _EMAIL.match(text)):
        raise _Invalid(
            f'expected an address such as "ops@example.com", got {_show(value)}'
        )
    return text


_LABEL = re.compile(r"\A(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def _acme_domain(value: Any) -> str:
    """
    A DNS name an http-01 challenge can prove: not a wildcard (only DNS
    challenges can), not an address.
    """
    name = _string(value).lower()
    labels = name.split(".")
    if name.startswith("*."):
        raise _Invalid(
            f"an http-01 challenge cannot prove a wildcard name, got {_show(value)}"
        )
    if not (len(name) <= 253 and all(_LABEL.match(each) for each in labels)):
        raise _Invalid(f'expected a DNS name such as "example.com", got {_show(value)}')
    if labels[-1].isdigit():
        raise _Invalid(f"expected a DNS name, not an address, got {_show(value)}")
    return name


def _domains(value: Any) -> Tuple[str, ...]:
    names: Tuple[str, ...] = _array(_acme_domain)(value)
    if not names:
        raise _Invalid("expected at least one DNS name")
    return tuple(dict.fromkeys(names))


def _state_dir(base_dir: str) -> Kind[str]:
    """
    A directory Gourmet keeps its ACME state in, made at start-up when
    missing (``gourmet check`` makes nothing).
    """
    resolve = _file_path(base_dir)

    def state_dir(value: Any) -> str:
        path = resolve(value)
        if os.path.exists(path) and not os.path.isdir(path):
            raise _Invalid(f"not a directory: {path}")
        return path

    return state_dir


def _ca_file(base_dir: str) -> Kind[str]:
    """
    A file of PEM certificates to trust.
    """
    existing = _existing_file(base_dir)

    def ca_file(value: Any) -> str:
        path = existing(value)
        try:
            certificates_in(read_file(path), path)
        except CertificateError as error:
            raise _Invalid(str(error)) from None
        return path

    return ca_file


def _acme(table: _Table, base_dir: str) -> Optional[AcmeConfig]:
    """
    The ``[server.acme]`` table, if there is one.
    """
    acme = table.table("acme")
    if not table.has("acme"):
        return None
    directory = acme.require("directory", _https_url, "the ACME server's URL")
    domains = acme.require("domains", _domains, "the certificate's DNS names")
    state_dir = acme.require(
        "state_dir", _state_dir(base_dir), "a directory for the account and keys"
    )
    values = acme.only(email=_email, ca_file=_ca_file(base_dir))
    return AcmeConfig(
        directory=directory, domains=domains, state_dir=state_dir, **values
    )


def _tls(table: _Table, base_dir: str) -> Dict[str, Any]:
    """
    The ``[server]`` keys of TLS, checked together.
    """
    values = table.fields(
        tls_listen=_array(_plain_endpoint),
        min_tls_version=_choice(("1.2", "1.3")),
        redirect_to_https=_boolean,
        hsts=_hsts,
        http2=_boolean,
        http2_max_concurrent_streams=_whole(1, 10000),
    )
    certificates = tuple(
        _certificate(each, base_dir)
        for each in table.tables("certificates", required=False)
    )
    acme = _acme(table, base_dir)
    if values.get("tls_listen") and not certificates and acme is None:
        raise table.error(
            "tls_listen",
            "TLS listeners need at least one [[server.certificates]] table"
            " (cert and key), or [server.acme]",
        )
    if acme is not None and not values.get("tls_listen"):
        raise table.error(
            "acme", "ACME certificates are for TLS listeners: set server.tls_listen"
        )
    if values.get("redirect_to_https") and not values.get("tls_listen"):
        raise table.error(
            "redirect_to_https",
            "redirects to HTTPS need server.tls_listen, a listener to send clients to",
        )
    return {**values, "certificates": certificates, "acme": acme}


def _frontend(
    table: _Table, upstreams: Collection[str], base_dir: str
) -> FrontendConfig:
    values = table.fields(
        port=_whole(1, 65535),
        listen=_array(_endpoint(base_dir)),
        max_body_size=_size,
        error_page=_text_file(base_dir),
        max_request_line=_whole(256, 1024 * 1024),
        max_header_size=_whole(1024, 1024 * 1024),
        max_headers=_whole(1, 10000),
        header_timeout=_number(0),
        body_min_rate=_whole(0),
        idle_timeout=_number(0),
        max_connections=_whole(0),
        shutdown_timeout=_number(0),
        workers=_workers,
        tunnel_idle_timeout=_number(0),
        trusted_proxies=_array(_network),
        accept_proxy_protocol=_array(_network),
        backlog=_whole(1, 65535),
        underscores_in_headers=_choice(("drop", "refuse", "pass")),
        server_header=_boolean,
        request_id=_boolean,
    )
    values.update(_tls(table, base_dir))
    locations = tuple(
        _location(location, upstreams) for location in table.tables("locations")
    )
    table.done()
    frontend = FrontendConfig(locations=locations, **values)
    if not frontend.request_id:
        _check_no_request_id(table, locations)
    return frontend


def _check_no_request_id(table: _Table, locations: Tuple[LocationConfig, ...]) -> None:
    """
    :raises ConfigError: when a header rule names ``$request_id``, which
        ``request_id = false`` leaves without a value.
    """
    for index, location in enumerate(locations):
        for rules, _ in _HEADER_RULES:
            header_rules: Optional[HeaderRules] = getattr(location, rules)
            if header_rules is not None and "request_id" in header_rules.variables:
                raise table.error(
                    "request_id",
                    f"false, but server.locations[{index}].{rules} uses"
                    " $request_id: set it true, or use another value",
                )


def _admin(table: _Table, base_dir: str) -> AdminConfig:
    secret = _token_file(base_dir)
    token = table.either("token_file", token=_token, token_file=secret)
    read_token = table.either(
        "read_token_file", read_token=_token, read_token_file=secret
    )
    values = table.fields(
        listen=_admin_listen(base_dir),
        hosts=_array(_console_host),
        max_body_size=_size,
        max_connections=_whole(1),
        read_requires_credentials=_boolean,
    )
    users = tuple(table.table("users").entries(_user_name, _password_hash))
    viewers = tuple(table.table("viewers").entries(_user_name, _password_hash))
    both = sorted({name for name, _ in users} & {name for name, _ in viewers})
    if both:
        raise table.error(
            "viewers", f"{both[0]!r} is in [admin.users] too: give each user one role"
        )
    if token is not None and token == read_token:
        raise table.error("read_token", "must differ from admin.token")
    table.done()
    admin = AdminConfig(
        token=token, read_token=read_token, users=users, viewers=viewers, **values
    )
    if admin.listen is not None and not admin.loopback and not admin.has_readers:
        raise table.error(
            "listen",
            "an admin listener that is not on loopback needs credentials: set"
            " admin.token, admin.token_file or [admin.users]",
        )
    if admin.read_requires_credentials and not admin.has_readers:
        raise table.error(
            "read_requires_credentials",
            "nobody could read: set admin.read_token, [admin.viewers],"
            " admin.token or [admin.users]",
        )
    return admin


def _stream_proxy_protocol(value: Any) -> Optional[str]:
    """
    An upstream's ``proxy_protocol``, or ``true`` for ``"v2"`` (the issue's
    spelling for streams).
    """
    if value is True:
        return "v2"
    try:
        return _proxy_protocol(value)
    except _Invalid:
        raise _Invalid(
            f'expected false, true (meaning "v2"), "v1" or "v2", got {_show(value)}'
        ) from None


def _stream(
    table: _Table, upstreams: Mapping[str, UpstreamConfig], base_dir: str
) -> StreamConfig:
    listen = table.require(
        "listen", _endpoint(base_dir), 'an endpoint such as "tcp:5432"'
    )
    upstream = table.require(
        "upstream", _upstream_name(upstreams), "an upstream's name"
    )
    values = table.only(
        proxy_protocol=_stream_proxy_protocol, idle_timeout=_number(0, True)
    )
    hash_key = upstreams[upstream].hash_key
    if hash_key not in (None, "ip"):
        raise table.error(
            "upstream",
            f"upstreams.{upstream}.hash_key = {_show(hash_key)} means nothing"
            ' to a TCP stream: only "ip" does',
        )
    return StreamConfig(listen=listen, upstream=upstream, **values)


def _gourmet(document: _Table, source: str, base_dir: str) -> GourmetConfig:
    upstreams = _upstreams(document, base_dir)
    names = [upstream.name for upstream in upstreams]
    by_name = {upstream.name: upstream for upstream in upstreams}
    frontend = _frontend(document.table("server", "a [server] table"), names, base_dir)
    log = document.table("log").only(
        access_log=_log_target(base_dir),
        access_log_format=_choice(("combined", "json")),
    )
    demo = document.table("demo").only(listen=_array(_demo_address))
    admin = _admin(document.table("admin"), base_dir)
    streams: List[StreamConfig] = []
    for table in document.tables("streams", required=False):
        stream = _stream(table, by_name, base_dir)
        for earlier, other in enumerate(streams):
            if other.listen == stream.listen:
                raise table.error("listen", f"the same as streams[{earlier}].listen")
        streams.append(stream)
    cluster = _cluster(document.table("cluster"))
    document.done()
    return GourmetConfig(
        source=source,
        upstreams=upstreams,
        frontend=frontend,
        log=LogConfig(**log),
        demo=DemoConfig(**demo),
        admin=admin,
        streams=tuple(streams),
        cluster=cluster,
    )


#: An instance's name in ``[cluster]``: what a key and a console show.
_INSTANCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,99}")


def _instance_name(value: Any) -> str:
    if not isinstance(value, str) or not _INSTANCE_NAME.fullmatch(value):
        raise _Invalid(
            "expected a name of letters, digits and . _ : @ - (at most 100),"
            f' such as "gourmet-1", got {_show(value)}'
        )
    return value


def _etcd_endpoints(value: Any) -> Tuple[str, ...]:
    try:
        return endpoints_of(value)
    except BadOption as error:
        raise _Invalid(error.message) from None


def _prefix(value: Any) -> str:
    if not isinstance(value, str) or not value.endswith("/") or len(value) < 2:
        raise _Invalid(
            f'expected a key prefix ending in "/", such as "/gourmet/cluster/",'
            f" got {_show(value)}"
        )
    return value


def _cluster(table: _Table) -> ClusterConfig:
    values = table.only(
        etcd=_etcd_endpoints,
        prefix=_prefix,
        name=_instance_name,
        lease_ttl=_whole(2, 3600),
        dial_timeout=_number(0),
        username=_string,
        password=_string,
    )
    try:
        credentials_of(values.get("username"), values.get("password"))
    except BadOption as error:
        raise table.error(error.key, error.message) from None
    if values and "etcd" not in values:
        raise table.error(
            "etcd",
            'missing key: expected etcd\'s URLs, such as ["http://127.0.0.1:2379"],'
            " to share the console's changes (or no [cluster] table)",
        )
    return ClusterConfig(**values)


def parse_config(
    text: str, source: str, base_dir: Optional[str] = None
) -> GourmetConfig:
    """
    Build a configuration from the TOML ``text``.

    :param source: where ``text`` came from, for errors and
        :attr:`GourmetConfig.source`.
    :param base_dir: the directory relative file names in ``text`` are
        relative to; the current directory when ``None``.
    :raises ConfigError: for the first problem found.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, "", f"not valid TOML: {error}") from None
    return _gourmet(_Table(document, "", source), source, base_dir or os.curdir)


def parse_server_list(text: str, source: str) -> Tuple[ProvidedServer, ...]:
    """
    The ``[[servers]]`` of a file that ``provider = "file"`` reads, each
    written as a static server is (``path``, ``weight``, ``max_fail``,
    ``fail_timeout``, ``tls_verify``); at least one, so that a file caught
    half written never empties an upstream.

    :raises ConfigError: for the first problem found, naming the key.
    """
    try:
        document = _Table(tomllib.loads(text), "", source)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, "", f"not valid TOML: {error}") from None
    servers = tuple(_listed_server(each) for each in document.tables("servers"))
    document.done()
    return servers


def _listed_server(table: _Table) -> ProvidedServer:
    path = table.require("path", _string, 'an address such as "127.0.0.1:9001"')
    values = table.fields(weight=_whole(0, MAX_WEIGHT), tls_verify=_boolean, **_HEALTH)
    table.done()
    try:
        parse_origin(path)
    except ValueError as error:
        raise table.error("path", str(error)) from None
    return ProvidedServer(address=path, **values)


def load_config(path: str) -> GourmetConfig:
    """
    Read and build the configuration file at ``path``; relative file names in
    it are relative to its directory.

    :raises ConfigError: when the file cannot be read, or for the first
        problem found in it.
    """
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as error:
        raise ConfigError(path, "", f"cannot read: {error.strerror or error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(path, "", f"not valid TOML: {error}") from None
    return parse_config(text, path, os.path.dirname(path))
