"""How CapFilt talks to storage: one place for object-store settings, retries and storage errors.

Every path in a config or a command is an fsspec URL (a local path, `s3://bucket/prefix`, `gs://`, ...).
Credentials never pass through here, nor through a config: botocore finds them in each process's
environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, an instance
or pod role). The endpoint of an S3-compatible store comes from the environment too (AWS_ENDPOINT_URL
or AWS_ENDPOINT_URL_S3, which botocore honours) or from the run config's `storage.endpoint_url`.

`configure` installs the S3 settings as fsspec's defaults for `s3://` in this process (so every
`fsspec.open` / `url_to_fs` of the code base uses them) and in its environment as FSSPEC_S3 (for
the processes it starts); `worker_env` carries them, never a secret, to the workers of a Ray
cluster that a job joins.

Retries are explicit: botocore makes up to `max_attempts` attempts per request (throttling, 5xx
answers, timeouts, dropped connections) with exponential backoff ("standard" mode), and s3fs
repeats a call whose body read broke off or timed out (`S3FS_RETRIES` times in this process: s3fs
takes it from a class attribute, so Ray's workers keep s3fs's default, 5). `guard` turns what is
left once the retries are spent into one CapfiltError that names the path and the cause.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
from dataclasses import dataclass, field

import fsspec
from pyarrow.fs import FSSpecHandler, PyFileSystem

from models.errors import CapfiltError
from pipeline.manifest import is_secret_name, scrub, scrub_text

log = logging.getLogger(__name__)

S3FS_RETRIES = 3  # s3fs's own loop around botocore's (body reads cut short, timeouts botocore gave up on)
ENV = "FSSPEC_S3"  # fsspec reads its `s3://` defaults from this variable (JSON) when it is imported
_ENV_NAMES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


@dataclass
class StorageSection:
    """The run config's `storage:` section (no credentials here: they come from the environment)."""
    endpoint_url: str = ""  # "" = the environment's AWS_ENDPOINT_URL(_S3), else AWS itself
    max_attempts: int = 5  # botocore attempts per request (first try included), standard retry mode
    connect_timeout: float = 10.0  # seconds
    read_timeout: float = 60.0  # seconds without a byte before an attempt counts as failed
    options: dict = field(default_factory=dict)  # further s3fs arguments, e.g. {"requester_pays": true}


def problems(section: StorageSection) -> list[str]:
    """What is wrong with a storage section, each in its own words (for the config's validate)."""
    out = []
    if section.max_attempts < 1:
        out.append(f"storage.max_attempts={section.max_attempts} must be at least 1")
    if section.connect_timeout <= 0 or section.read_timeout <= 0:
        out.append("storage.connect_timeout and storage.read_timeout must be > 0 seconds")
    if section.endpoint_url and "://" not in section.endpoint_url:
        out.append(f"storage.endpoint_url={section.endpoint_url!r} needs a scheme, e.g. http://host:9000")
    if section.endpoint_url and "@" in section.endpoint_url.split("://", 1)[-1].split("/", 1)[0]:
        out.append("storage.endpoint_url carries user:password@: put credentials in the environment "
                   "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), never in a config")
    secret = sorted(_secret_names(section.options, is_secret_name))
    if secret:
        out.append(f"storage.options holds credential-like {secret}: put credentials in the environment "
                   "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, or AWS_PROFILE), "
                   "never in a config")
    return out


def _secret_names(value, is_secret, path: str = "") -> list[str]:
    if not isinstance(value, dict):
        return []
    out = []
    for k, v in value.items():
        name = f"{path}.{k}" if path else str(k)
        out += [name] if is_secret(k) else _secret_names(v, is_secret, name)
    return out


def s3_options(section: StorageSection | None = None) -> dict:
    """The s3fs arguments `section` stands for (retries, timeouts, endpoint; no credentials)."""
    s = section or StorageSection()
    opts: dict = {
        # no cached listings: Ray's workers write the staging and checkpoint files this process lists
        "use_listings_cache": False,
        "config_kwargs": {"retries": {"total_max_attempts": s.max_attempts, "mode": "standard"},
                          "connect_timeout": s.connect_timeout, "read_timeout": s.read_timeout},
    }
    if s.endpoint_url:
        opts["endpoint_url"] = s.endpoint_url
    for k, v in s.options.items():
        if k == "config_kwargs" and isinstance(v, dict):
            opts["config_kwargs"] = {**opts["config_kwargs"], **v}
        else:
            opts[k] = v
    return opts


_BASE_CONF: dict | None = None  # fsspec's own s3 defaults (from FSSPEC_S3 / its config files), before ours
ENV_GIVEN = ENV in os.environ  # FSSPEC_S3 set by the user or a job's runtime env, before configure


def configure(section: StorageSection | None = None) -> dict:
    """Make `section` the default of every `s3://` filesystem this process opens; returns the options."""
    global _BASE_CONF
    if _BASE_CONF is None:
        _BASE_CONF = dict(fsspec.config.conf.get("s3", {}))
    opts = {**_BASE_CONF, **s3_options(section)}
    fsspec.config.conf["s3"] = opts
    # and of the processes started from here (img2dataset's, a local Ray's): fsspec reads it at import
    os.environ[ENV] = json.dumps(opts, sort_keys=True)
    try:
        import s3fs
    except ImportError:
        return opts
    s3fs.S3FileSystem.retries = S3FS_RETRIES
    s3fs.S3FileSystem.clear_instance_cache()  # instances made with the old defaults must not be handed out again
    return opts


def worker_env() -> dict[str, str]:
    """Environment variables that give Ray's workers this process's `s3://` settings (no secrets:
    `configure` refuses them, and the credentials stay in the environment of each node)."""
    opts = fsspec.config.conf.get("s3")
    return {ENV: json.dumps(opts, sort_keys=True)} if opts else {}


def endpoint() -> str | None:
    """The S3 endpoint in use: the config's, else the environment's; None means AWS itself."""
    return (fsspec.config.conf.get("s3") or {}).get("endpoint_url") or next(
        (os.environ[n] for n in _ENV_NAMES if os.environ.get(n)), None)


def is_local(path: str) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of `path` (with the configured defaults) and the path on it."""
    return fsspec.core.url_to_fs(str(path))


def arrow_filesystem(path: str):
    """The filesystem Ray Data and pyarrow should use for `path`: None for a local path (they
    resolve it themselves), else this process's fsspec filesystem wrapped for pyarrow, so Ray's
    reads, writes and job checkpoint see the same endpoint, retries and timeouts as the rest."""
    if is_local(path):
        return None
    return PyFileSystem(FSSpecHandler(filesystem(path)[0]))


def exists(path: str) -> bool:
    with guard("checking", path):
        fs, root = filesystem(path)
        return fs.exists(root)


# -- errors ---------------------------------------------------------------------------------------

_STORAGE_MODULES = ("botocore", "aiobotocore", "s3fs", "urllib3", "aiohttp", "fsspec", "gcsfs", "adlfs")


def _chain(err: BaseException):
    """`err` and the exceptions behind it (causes, contexts, Ray's wrapped task errors), once each."""
    seen, todo = set(), [err]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]
        inner = getattr(e, "cause", None)  # ray.exceptions.RayTaskError keeps the task's exception here
        if isinstance(inner, BaseException):
            todo.append(inner)


def _is_storage(e: BaseException) -> bool:
    module = type(e).__module__ or ""
    if module.split(".")[0] in _STORAGE_MODULES:
        return True
    return isinstance(e, (OSError, TimeoutError)) and type(e).__module__ in ("builtins", "socket", "ssl")


def cause(err: BaseException) -> str | None:
    """One line on the storage failure behind `err` (the most specific one in its chain), or None
    when `err` is not a storage failure. A CapfiltError in the chain is returned as it is."""
    found = None
    for e in _chain(err):
        if isinstance(e, CapfiltError):
            return str(e)
        if _is_storage(e):
            # the deepest botocore error says most (its code, status and retry count); else the first
            if found is None or (type(e).__module__ or "").startswith(("botocore", "aiobotocore")):
                found = e
    if found is None:
        return _from_text(err)
    return _describe(found)


# A task's exception crosses Ray's process boundary as text: its chain survives only in the message.
_TEXT_CAUSE = re.compile(
    r"^(?P<type>(?:botocore|aiobotocore|s3fs|urllib3|aiohttp)\.[\w.]+|OSError|IOError|FileNotFoundError|"
    r"PermissionError|TimeoutError|ConnectionError|ConnectionResetError|ConnectionRefusedError)"
    r": (?P<msg>.+)$", re.M)


def _from_text(err: BaseException) -> str | None:
    found = []
    for e in _chain(err):
        found += _TEXT_CAUSE.findall(str(e))
    if not found:
        return None
    # botocore says most (the code, the operation, the retries); else the last error named
    kind, msg = next((f for f in reversed(found) if f[0].startswith(("botocore", "aiobotocore"))), found[-1])
    numbered = re.match(r"\[Errno (\d+)\] (.*)", msg)
    if numbered:
        msg = numbered.group(2) + (f" ({_ERRNO_HINTS[int(numbered.group(1))]})"
                                   if int(numbered.group(1)) in _ERRNO_HINTS else "")
    text = " ".join(f"{kind.rsplit('.', 1)[-1]}: {msg}".split())
    return scrub_text(text if len(text) <= 400 else text[:400] + " ...")


# what s3fs's errnos stand for (s3fs/errors.py maps S3 error codes onto them)
_ERRNO_HINTS = {errno.EREMOTEIO: "the store answered HTTP 5xx: InternalError", errno.EBUSY: "the store is "
                "busy or throttling: HTTP 503 SlowDown / ServiceUnavailable", errno.ETIMEDOUT: "timed out"}


def _describe(e: BaseException) -> str:
    response = getattr(e, "response", None)
    if isinstance(response, dict) and "Error" in response:
        meta = response.get("ResponseMetadata", {})
        status = meta.get("HTTPStatusCode")
        attempts = meta.get("RetryAttempts")
        text = (f"{response['Error'].get('Code', '?')} (HTTP {status}): "
                f"{response['Error'].get('Message', '') or e}")
        if attempts is not None:
            text += f"; gave up after {attempts + 1} attempt(s)"
    elif isinstance(e, OSError) and e.strerror:  # s3fs's translation of the store's answer; Ray may add notes
        text = f"{type(e).__name__}: {e.strerror}"
        if e.errno in _ERRNO_HINTS:
            text += f" ({_ERRNO_HINTS[e.errno]})"
    else:
        text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    text = " ".join(text.split())  # one line
    return scrub(text if len(text) <= 400 else text[:400] + " ...")[0]


def error(action: str, path: str, err: BaseException) -> CapfiltError | None:
    """The CapfiltError for a storage failure while `action` `path`, or None if `err` is not one."""
    why = cause(err)
    if why is None:
        return None
    if any(isinstance(e, CapfiltError) for e in _chain(err)):
        return CapfiltError(why)
    where = scrub(str(path))[0]
    hint = ""
    if not is_local(path):
        hint = (f" (endpoint {scrub(endpoint())[0]})" if endpoint() else "") + \
            ". The store kept failing after the configured retries (storage.max_attempts, " \
            "storage.read_timeout): check the endpoint and credentials, then run the same command " \
            "again; finished work is kept"
    return CapfiltError(f"storage: {action} {where} failed: {why}{hint}")


@contextlib.contextmanager
def guard(action: str, path: str):
    """Storage failures inside the block become one CapfiltError naming `path` and the cause."""
    try:
        yield
    except CapfiltError:
        raise
    except Exception as err:  # noqa: BLE001 - re-raised unless it is a storage failure
        mapped = error(action, path, err)
        if mapped is None:
            raise
        log.debug("storage failure while %s %s", action, path, exc_info=True)
        raise mapped from None
