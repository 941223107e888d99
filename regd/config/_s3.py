"""s3 (regd.storage.s3): the `[s3]` table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from regd.errors import ConfigError

if TYPE_CHECKING:
    from regd.config._config import Config

# A table of its own rather than `[storage.s3]`: `storage` is already the driver's name.
S3_KEYS = (
    "bucket",
    "prefix",
    "region",
    "endpoint_url",
    "path_style",
    "access_key",
    "secret_key",
    "encryption",
    "storage_class",
    "ca_bundle",
    "redirect",
    "redirect_expiry",
    "chunk_size",
    "copy_threshold",
    "max_connections",
)
S3_ENCRYPTIONS = ("AES256", "aws:kms")
_MiB = 1024 * 1024


def _validate_s3(config: Config) -> None:
    if not config.s3_bucket:
        raise ConfigError('storage = "s3" needs s3.bucket (REGD_S3_BUCKET)')
    if (config.s3_access_key is None) != (config.s3_secret_key is None):
        raise ConfigError("s3.access_key and s3.secret_key must be given together")
    if config.s3_encryption is not None and config.s3_encryption not in S3_ENCRYPTIONS:
        raise ConfigError(f"s3.encryption must be one of {', '.join(S3_ENCRYPTIONS)}")
    if not 5 * _MiB <= config.s3_chunk_size <= 5 * 1024 * _MiB:
        raise ConfigError("s3.chunk_size must be between 5 MiB and 5 GiB (S3's part sizes)")
    if not 0 < config.s3_copy_threshold <= 5 * 1024 * _MiB:
        raise ConfigError("s3.copy_threshold must be more than 0 and at most 5 GiB")
    if not 1 <= config.s3_max_connections <= 1024:
        raise ConfigError("s3.max_connections must be between 1 and 1024")
    if not 1 <= config.s3_redirect_expiry <= 7 * 86400:
        raise ConfigError("s3.redirect_expiry must be between 1 second and 7 days")
    if config.s3_endpoint_url is not None and not config.s3_endpoint_url.startswith(
        ("http://", "https://")
    ):
        raise ConfigError(f"s3.endpoint_url must be an http(s) URL, not {config.s3_endpoint_url!r}")
