"""CURVE encryption and authentication for every BoardLens socket.

    boardlens keys generate deploy/keys        # server.secret/.public, client.secret/.public,
                                               # authorized_clients
    boardlens produce --curve-keys deploy/keys ...

Publishers (the producer's endpoints, the trainer's snapshot endpoint) are CURVE servers:
they need the server secret key and accept only clients whose public key is in
`authorized_clients` (checked by a ZAP handler in this process, started before any bind:
without one libzmq would accept every client that speaks CURVE). Subscribers are CURVE
clients: they need a client secret key and the server's public key. Everything on the wire is
then encrypted, and a peer without an authorised key never gets a subscription, so it can
neither read nor inject. Keys are Z85 text (40 characters), one per file; `authorized_clients`
holds one public key per line, optionally followed by a label. With the folder name `env` the keys come
from the environment instead: BOARDLENS_CURVE_SERVER_SECRET, BOARDLENS_CURVE_SERVER_PUBLIC,
BOARDLENS_CURVE_CLIENT_SECRET, BOARDLENS_CURVE_AUTHORIZED_CLIENTS (keys separated by
whitespace or commas).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq

_KEY_LEN = 40  # Z85 of 32 bytes
_Z85 = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")
_ZAP_DOMAIN = "boardlens"


class CurveKeyError(ValueError):
    """A key file or variable is missing or malformed (the message names it)."""


@dataclass(frozen=True)
class Curve:
    """One side's CURVE material. Server: secret + authorized; client: secret + server_public."""

    secret: bytes
    public: bytes
    server_public: bytes | None = None
    authorized: frozenset[bytes] = frozenset()


def _check_key(text: str, where: str) -> bytes:
    key = text.strip()
    if len(key) != _KEY_LEN or not _Z85.issuperset(key):
        raise CurveKeyError(f"{where}: not a CURVE key (want 40 Z85 characters, got {len(key)} characters)")
    return key.encode()


def _where(folder: str, name: str) -> str:
    """The environment variable (folder 'env') or the file that holds key `name`."""
    return f"BOARDLENS_CURVE_{name.replace('.', '_').upper()}" if folder == "env" else str(Path(folder) / name)


def _read(folder: str, name: str) -> tuple[str, str]:
    """(text, where it came from) of key `name`."""
    where = _where(folder, name)
    if folder == "env":
        value = os.environ.get(where)
        if value is None:
            raise CurveKeyError(f"curve_keys=env but {where} is not set")
        return value, where
    try:
        return Path(where).read_text(), where
    except OSError as e:
        raise CurveKeyError(f"cannot read CURVE key file {where}: {e.strerror or e}") from e


def _key(folder: str, name: str) -> bytes:
    return _check_key(*_read(folder, name))


def server_keys(folder: str) -> Curve:
    """What a publisher needs: the server secret key and the authorised client keys."""
    secret = _key(folder, "server.secret")
    text, where = _read(folder, "authorized_clients")
    # One key per line, optionally followed by a label ('#' is a Z85 character: no comments).
    allowed = frozenset(_check_key(line.split()[0], where) for line in text.replace(",", "\n").splitlines()
                        if line.strip())
    if not allowed:
        raise CurveKeyError(f"{where} lists no client key: nobody could connect")
    return Curve(secret, zmq.curve_public(secret), authorized=allowed)


def client_keys(folder: str) -> Curve:
    """What a subscriber needs: a client secret key and the server's public key."""
    secret = _key(folder, "client.secret")
    return Curve(secret, zmq.curve_public(secret), server_public=_key(folder, "server.public"))


def generate(folder: str | Path, clients: int = 1) -> list[Path]:
    """Write a server key pair, `clients` client key pairs and the allow-list; never overwrites.

    Secret files are created 0600. With clients > 1 the extra pairs are client-2.secret ...,
    all authorised (one per consumer lets you revoke one without touching the others)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = ["server", "client"] + [f"client-{i}" for i in range(2, clients + 1)]
    targets = [folder / f"{n}.{kind}" for n in names for kind in ("secret", "public")]
    targets.append(folder / "authorized_clients")
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)}")
    allowed = []
    for name in names:
        public, secret = zmq.curve_keypair()
        fd = os.open(folder / f"{name}.secret", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.decode() + "\n")
        (folder / f"{name}.public").write_text(public.decode() + "\n")
        if name != "server":
            allowed.append(f"{public.decode()}  {name}")
    (folder / "authorized_clients").write_text("\n".join(allowed) + "\n")
    return targets


class _AllowList:
    """ZAP credentials provider: a set of Z85 public keys; counts refusals."""

    def __init__(self) -> None:
        self.keys: set[bytes] = set()
        self.denied = 0
        self.on_denied = None  # optional callable(), e.g. a Prometheus counter's inc

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        self.denied += 1
        if self.on_denied is not None:
            self.on_denied()
        return False


_AUTH: dict[int, tuple[object, _AllowList]] = {}  # id(context) -> (authenticator, allow-list)
_AUTH_LOCK = threading.Lock()


def allow(ctx: zmq.Context, keys: frozenset[bytes]) -> _AllowList:
    """Start this context's ZAP handler (once) and add `keys` to its allow-list."""
    from zmq.auth.thread import ThreadAuthenticator

    with _AUTH_LOCK:
        if id(ctx) not in _AUTH:
            auth = ThreadAuthenticator(ctx)
            auth.start()
            allow_list = _AllowList()
            auth.configure_curve_callback(domain=_ZAP_DOMAIN, credentials_provider=allow_list)
            _AUTH[id(ctx)] = (auth, allow_list)
        allow_list = _AUTH[id(ctx)][1]
        allow_list.keys |= keys
        return allow_list


def stop_authenticator(ctx: zmq.Context) -> None:
    """Stop the context's ZAP handler (before ctx.term(), which would otherwise wait for it)."""
    with _AUTH_LOCK:
        entry = _AUTH.pop(id(ctx), None)
    if entry is not None:
        entry[0].stop()


def apply_server(sock: zmq.Socket, curve: Curve) -> None:
    sock.curve_secretkey = curve.secret
    sock.curve_publickey = curve.public
    sock.curve_server = True
    sock.zap_domain = _ZAP_DOMAIN.encode()


def apply_client(sock: zmq.Socket, curve: Curve) -> None:
    sock.curve_secretkey = curve.secret
    sock.curve_publickey = curve.public
    sock.curve_serverkey = curve.server_public


def is_loopback(endpoint: str) -> bool:
    """True for ipc://, inproc:// and tcp:// on 127.x, ::1 or localhost (no network exposure)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return True
    host = rest.rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host == "::1" or host.startswith("127.")
