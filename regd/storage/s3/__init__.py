"""The s3 driver: files as objects in one bucket of an S3-compatible store.

Paths map to keys under an optional prefix, so the layout is Distribution's and a bucket
its s3 driver wrote can be adopted in place.

A file written through a writer is kept "pending" between writer sessions: its bytes are
the parts of one multipart upload plus a short tail not yet a part (S3 wants parts of at
least 5 MiB, except the last). Which parts make the file, and the tail itself, live in one
state object beside the file (`<key>.~writer`), written last by each commit, so any
process can continue the file from S3 alone. Reading a pending file, or moving it, first
completes the multipart upload into a plain object; moving is then a server-side copy.

A file made with `new_file` is no pending file: its parts go to its own key and the
upload is completed by its one writer's commit, so it needs no state object and no copy;
until then S3 shows nothing at that key.

The package: the driver in `_driver`, its options, shared boto3 session and error codes in
`_options`, the reader in `_reader`, the writers and what opens them in `_writers`, and
what they share (S3's part limits, a pending file's state) in `_common`.
"""

from regd.storage.s3._common import MiB, StorageUnavailable
from regd.storage.s3._driver import S3Driver
from regd.storage.s3._options import S3Options

__all__ = ["MiB", "S3Driver", "S3Options", "StorageUnavailable"]
