"""The node's settings: a YAML file (docs/node.md lists the keys) overridden by the command line.

Every value is checked here, before a port is opened or a model loaded, so a typo is one line at
start-up rather than a study that fails hours later."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from vfa.errors import ConfigError

# DICOM AE titles: up to 16 characters of the default repertoire, no backslash or control characters
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")
_DEST = re.compile(r"^(?P<aet>[^@]+)@(?P<host>[^:@]+):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class Destination:
    aet: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


@dataclass
class NodeConfig:
    store: str = ""
    model: list = field(default_factory=list)  # one checkpoint, several (an ensemble) or an ensemble file
    aet: str = "VFA"
    host: str = "127.0.0.1"  # loopback unless told otherwise: a PACS-facing port is a deliberate choice
    port: int = 11112
    send_to: list = field(default_factory=list)   # [Destination]
    allow: list = field(default_factory=list)     # ["AET" or "AET@HOST"]; empty: any caller
    quiet_time: float = 10.0      # seconds without a new instance before a study is read (Orthanc's StableAge)
    device: str = "auto"
    max_attempts: int = 6         # reads or sends of one study before it is dead-lettered
    retry_base: float = 5.0       # seconds before the first retry; doubled each time up to retry_max
    retry_max: float = 300.0
    min_side: int = 64            # px: a lateral spine image smaller than this is not VFA
    poll: float = 0.2             # seconds between looks at the queue
    metrics_port: int = 0         # GET /health and /metrics (Prometheus) on host:metrics_port; 0: off


KEYS = {f.name for f in fields(NodeConfig)}


def parse_destination(text: str) -> Destination:
    m = _DEST.match(str(text).strip())
    if not m:
        raise ConfigError(f"destination {text!r} is not AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
    port = int(m["port"])
    if not 0 < port < 65536:
        raise ConfigError(f"destination {text!r}: port must be 1-65535")
    return Destination(check_aet(m["aet"], "destination AE title"), m["host"], port)


def check_aet(value: str, what: str = "AE title") -> str:
    value = str(value).strip()
    if not _AET.match(value):
        raise ConfigError(f"{what} {value!r} must be 1-16 printable characters without a backslash")
    return value


def read_yaml(path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"node config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    unknown = sorted(set(k.replace("-", "_") for k in data) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(KEYS))}")
    return {k.replace("-", "_"): v for k, v in data.items()}


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def resolve(config_file=None, **overrides) -> NodeConfig:
    """The settings: NodeConfig's defaults < the YAML file < the given overrides (None: not given)."""
    values = read_yaml(config_file) if config_file else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = set(values) - KEYS
    if unknown:
        raise ConfigError(f"unknown node setting(s): {', '.join(sorted(unknown))}")
    cfg = NodeConfig(**values)
    cfg.model = [str(m) for m in _as_list(cfg.model)]
    cfg.send_to = [d if isinstance(d, Destination) else parse_destination(d) for d in _as_list(cfg.send_to)]
    cfg.allow = [_allowed(a) for a in _as_list(cfg.allow)]
    cfg.aet = check_aet(cfg.aet, "--aet")
    _check_numbers(cfg)
    if not cfg.store:
        raise ConfigError("vfa node needs --store DIR (the received files and the queue live there)")
    return cfg


def _allowed(entry: str) -> str:
    aet, _, host = str(entry).partition("@")
    check_aet(aet, "allowed AE title")
    return f"{aet.strip()}@{host.strip()}" if host.strip() else aet.strip()


def _check_numbers(cfg: NodeConfig) -> None:
    checks = (("port", cfg.port, 1, 65535), ("quiet_time", cfg.quiet_time, 0, 86400),
              ("max_attempts", cfg.max_attempts, 1, 1000), ("retry_base", cfg.retry_base, 0, 86400),
              ("retry_max", cfg.retry_max, 0, 86400), ("min_side", cfg.min_side, 1, 100000),
              ("poll", cfg.poll, 0.01, 60), ("metrics_port", cfg.metrics_port, 0, 65535))
    for name, value, low, high in checks:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if not low <= number <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, got {value!r}")
    cfg.port, cfg.max_attempts, cfg.min_side = int(cfg.port), int(cfg.max_attempts), int(cfg.min_side)
    cfg.metrics_port = int(cfg.metrics_port)
    cfg.quiet_time, cfg.retry_base, cfg.retry_max = float(cfg.quiet_time), float(cfg.retry_base), float(cfg.retry_max)


def for_running(cfg: NodeConfig) -> NodeConfig:
    """What serving needs beyond status/resend: a model and a destination."""
    if not cfg.model:
        raise ConfigError("vfa node needs --model CKPT (or `model:` in --config)")
    for m in cfg.model:
        if not Path(m).exists():
            raise FileNotFoundError(f"model not found: {m}")
    if not cfg.send_to:
        raise ConfigError("vfa node needs --send-to AET@HOST:PORT (or `send_to:` in --config)")
    return cfg
