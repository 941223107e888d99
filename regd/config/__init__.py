"""Configuration: one frozen object, from a TOML file, `REGD_*` variables and flags.

Precedence, lowest to highest: built-in defaults, the file, the environment, the flags.

One module per settings table (`_auth`, `_events`, `_mirror`, `_quota`, `_retention`,
`_s3`), the object that holds them (`_config`), the loader that fills and checks it
(`_loader`) and the parsing they share (`_parsing`). What other modules use is here.
"""

from regd.config._auth import TrustedIssuerConfig
from regd.config._config import Config
from regd.config._events import EventEndpoint
from regd.config._loader import load
from regd.config._mirror import MirrorConfig
from regd.config._quota import QuotaRule
from regd.config._retention import RetentionRule
from regd.config._workers import WORKERS_CAP, default_workers, usable_cpus

__all__ = [
    "WORKERS_CAP",
    "Config",
    "EventEndpoint",
    "MirrorConfig",
    "QuotaRule",
    "RetentionRule",
    "TrustedIssuerConfig",
    "default_workers",
    "load",
    "usable_cpus",
]
