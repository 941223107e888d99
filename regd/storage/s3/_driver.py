"""The s3 driver itself: paths to keys, opening reads and writes, listings, moves and
deletes; its reader is in `_reader`, its writers in `_writers`."""

from __future__ import annotations

import builtins
import contextlib
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import trio
from outcome import Outcome

from regd.storage.base import (
    FileInfo,
    InvalidOffset,
    PathNotFound,
    StorageError,
    check_path,
)
from regd.storage.s3._common import (
    MAX_PART,
    MAX_PARTS,
    MIN_PART,
    StorageUnavailable,
    T,
    _InThread,
    _State,
)
from regd.storage.s3._options import (
    _CHANGED,
    _DENIED,
    _NOT_FOUND,
    _THROTTLED,
    S3Options,
    _boto_session,
)
from regd.storage.s3._reader import _S3Reader
from regd.storage.s3._writers import _open_writer, _S3NewFile, _S3Writer

# Keys per DeleteObjects request and per listing page.
DELETE_BATCH = 1000

STATE_SUFFIX = ".~writer"


class S3Driver:
    name = "s3"

    def __init__(self, options: S3Options) -> None:
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import BotoCoreError

        if not options.bucket:
            raise StorageError("the s3 storage driver needs a bucket")
        if options.chunk_size < MIN_PART or options.chunk_size > MAX_PART:
            raise StorageError("the s3 multipart chunk size must be between 5 MiB and 5 GiB")
        self.options = options
        self.bucket = options.bucket
        self._prefix = options.prefix.strip("/")
        self._chunk = options.chunk_size
        self._limiter = trio.CapacityLimiter(options.max_connections)
        session = _boto_session()
        boto_config = BotoConfig(
            # One connection per thread the limiter lets run at once.
            max_pool_connections=options.max_connections,
            connect_timeout=options.connect_timeout,
            read_timeout=options.read_timeout,
            retries={"max_attempts": options.retries, "mode": "standard"},
            s3={"addressing_style": "path" if options.path_style else "auto"},
            signature_version="s3v4",
        )
        # One client for every request: botocore clients are thread-safe.
        try:
            self._client: Any = self._make_client(session, options, boto_config)
        except BotoCoreError as exc:
            raise StorageError(f"cannot set up the client for {options.where()}: {exc}") from None
        self._extra: dict[str, str] = {}
        if options.encryption:
            self._extra["ServerSideEncryption"] = options.encryption
        if options.storage_class:
            self._extra["StorageClass"] = options.storage_class

    @staticmethod
    def _make_client(session: Any, options: S3Options, boto_config: Any) -> Any:
        return session.client(
            "s3",
            aws_access_key_id=options.access_key or None,
            aws_secret_access_key=options.secret_key or None,
            region_name=options.region or None,
            endpoint_url=options.endpoint_url or None,
            verify=options.ca_bundle or None,
            config=boto_config,
        )

    @property
    def location(self) -> str:
        return self.options.where()

    # -- plumbing ------------------------------------------------------------------------

    def _key(self, path: str) -> str:
        check_path(path)
        return f"{self._prefix}/{path}" if self._prefix else path

    def _error(self, exc: Exception, path: str) -> StorageError:
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = self.location
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            message = error.get("Message") or code
            if code in _NOT_FOUND:
                return PathNotFound(path)
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket} does not exist")
            if code in _THROTTLED or status >= 500:
                return StorageUnavailable(f"{where} is unavailable: {code}: {message}")
            if code in _DENIED:
                return StorageError(f"{where} refused access: {code}: {message}")
            return StorageError(f"{where} failed on {path}: {code}: {message}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StorageError(
                f"no usable credentials for {where}: set s3.access_key and s3.secret_key "
                "or the standard AWS environment"
            )
        if isinstance(exc, ConnectionError):
            endpoint = self.options.endpoint_url or "S3"
            return StorageUnavailable(f"cannot reach {endpoint}: {exc}")
        return StorageUnavailable(f"{where} failed on {path}: {exc}")

    def _guarded(self, path: str, fn: Callable[[], T]) -> T:
        """`fn()` with boto's failures as storage errors (on the calling thread)."""
        from botocore.exceptions import BotoCoreError, ClientError
        from urllib3.exceptions import HTTPError

        try:
            return fn()
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, path) from None
        except (OSError, HTTPError) as exc:
            raise StorageUnavailable(f"{self.location} failed on {path}: {exc}") from None

    async def _run(self, path: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call on a worker thread; boto's failures as storage errors."""
        return await trio.to_thread.run_sync(
            partial(self._guarded, path, partial(fn, *args, **kwargs)), limiter=self._limiter
        )

    async def _start(
        self, path: str, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> _InThread[T]:
        """Start a blocking call on a thread of its own and return at once: the caller
        goes on (receiving the next part, sending the last read) and waits for it later.
        It holds one of the limiter's slots until it ends, as `_run`'s calls do."""
        call: _InThread[T] = _InThread()
        await self._limiter.acquire_on_behalf_of(call)
        token = trio.lowlevel.current_trio_token()

        def arrived(result: Outcome[T]) -> None:
            call.result = result
            self._limiter.release_on_behalf_of(call)
            call.done.set()

        def deliver(result: Outcome[T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(arrived, result)

        work = partial(self._guarded, path, partial(fn, *args, **kwargs))
        trio.lowlevel.start_thread_soon(work, deliver)
        return call

    def _call(self, method: str, **kwargs: Any) -> Any:
        return getattr(self._client, method)(Bucket=self.bucket, **kwargs)

    def _head(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            result: dict[str, Any] = self._call("head_object", Key=key)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                return None
            raise
        return result

    def _get(self, key: str, byte_range: str | None = None) -> bytes | None:
        from botocore.exceptions import ClientError

        kwargs = {"Range": byte_range} if byte_range else {}
        try:
            response = self._call("get_object", Key=key, **kwargs)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in _NOT_FOUND:
                return None
            raise
        with response["Body"] as body:
            data: bytes = body.read()
        return data

    def _load_state(self, key: str) -> _State | None:
        body = self._get(key + STATE_SUFFIX)
        return None if body is None else _State.decode(body)

    def _save_state(self, key: str, state: _State) -> None:
        self._call(
            "put_object",
            Key=key + STATE_SUFFIX,
            Body=state.encode(),
            Metadata={"regd-size": str(state.size), "regd-upload": state.upload or ""},
        )

    def _delete_keys(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            response = self._call(
                "delete_objects",
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise StorageError(
                    f"{self.location} could not delete {first.get('Key')}: "
                    f"{first.get('Code')}: {first.get('Message')}"
                )

    def _abort(self, key: str, upload: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self._call("abort_multipart_upload", Key=key, UploadId=upload)
        except ClientError as exc:
            # Already completed or aborted: nothing left to free.
            if str(exc.response.get("Error", {}).get("Code")) not in ("NoSuchUpload", "404"):
                raise

    def _start_upload(self, key: str) -> str:
        upload: str = self._call("create_multipart_upload", Key=key, **self._extra)["UploadId"]
        return upload

    def _upload_part(self, key: str, upload: str, number: int, data: bytes) -> str:
        if number > MAX_PARTS:
            raise StorageError(f"{key} would need more than {MAX_PARTS} parts: raise s3.chunk_size")
        etag: str = self._call(
            "upload_part", Key=key, UploadId=upload, PartNumber=number, Body=data
        )["ETag"]
        return etag

    def _complete(self, key: str, state: _State) -> None:
        """Make a pending file a plain object (its state object is removed after)."""
        from botocore.exceptions import ClientError

        if state.upload is None:
            self._call("put_object", Key=key, Body=state.tail, **self._extra)
        else:
            parts = list(state.parts)
            if state.tail:
                number = len(parts) + 1
                parts.append((number, self._upload_part(key, state.upload, number, state.tail), 0))
            try:
                self._call(
                    "complete_multipart_upload",
                    Key=key,
                    UploadId=state.upload,
                    MultipartUpload={
                        "Parts": [{"PartNumber": n, "ETag": etag} for n, etag, _ in parts]
                    },
                )
            except ClientError as exc:
                # Completed already by a process that died before removing the state.
                head = self._head(key)
                code = str(exc.response.get("Error", {}).get("Code"))
                if code != "NoSuchUpload" or head is None or head["ContentLength"] != state.size:
                    raise
        self._delete_keys([key + STATE_SUFFIX])

    def _materialize(self, key: str) -> dict[str, Any] | None:
        """The plain object at `key` (completing a pending file first), or None."""
        head = self._head(key)
        if head is not None:
            return head
        state = self._load_state(key)
        if state is None:
            return None
        self._complete(key, state)
        return self._head(key)

    # -- small files ---------------------------------------------------------------------

    async def get_content(self, path: str) -> bytes:
        key = self._key(path)

        def read() -> bytes:
            data = self._get(key)
            if data is None:
                if self._materialize(key) is None:
                    raise PathNotFound(path)
                data = self._get(key)
            if data is None:
                raise PathNotFound(path)
            return data

        return await self._run(path, read)

    async def put_content(self, path: str, data: bytes) -> None:
        key = self._key(path)
        await self._run(path, self._call, "put_object", Key=key, Body=data, **self._extra)

    # -- streaming -----------------------------------------------------------------------

    async def reader(self, path: str, offset: int = 0) -> _S3Reader:
        key = self._key(path)

        def open_at() -> tuple[int, str, Any]:
            head = self._materialize(key)
            if head is None:
                raise PathNotFound(path)
            size = int(head["ContentLength"])
            if offset < 0 or offset > size:
                raise InvalidOffset(path, offset)
            etag = str(head["ETag"])
            if offset == size:
                return size, etag, None
            # Pinned to the version just looked at, so a replaced file is not spliced.
            body = self._call("get_object", Key=key, Range=f"bytes={offset}-", IfMatch=etag)
            return size, etag, body["Body"]

        size, etag, body = await self._run(path, open_at)
        return _S3Reader(self, path, key, etag, offset, size, body)

    def _get_range(self, path: str, key: str, etag: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of the version `etag` names; exactly those or an error."""
        from botocore.exceptions import ClientError

        try:
            # Pinned to the version opened, so a replaced file is not spliced.
            response = self._call(
                "get_object", Key=key, Range=f"bytes={start}-{end - 1}", IfMatch=etag
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code"))
            if code in _NOT_FOUND or code in _CHANGED:
                raise StorageError(f"{path} changed or vanished while being read") from None
            raise
        with response["Body"] as body:
            # A store that ignored the range would send the whole file: not read at all.
            if int(response.get("ContentLength", -1)) != end - start:
                raise StorageError(f"{path}: the store answered a range with other bytes")
            # Unsized, so botocore checks the body against its Content-Length.
            data: bytes = body.read()
        if len(data) != end - start:
            raise StorageError(f"{path} changed or vanished while being read")
        return data

    async def writer(self, path: str, *, offset: int = 0) -> _S3Writer:
        key = self._key(path)
        if offset < 0:
            raise InvalidOffset(path, offset)
        return await self._run(path, _open_writer, self, path, key, offset)

    async def new_file(self, path: str, *, staging: str) -> _S3NewFile:
        check_path(staging)
        # Nothing goes to `staging`: the parts go to the file's own key, where a
        # multipart upload shows nothing until it is completed.
        return _S3NewFile(self, path, self._key(path), _State())

    # -- metadata ------------------------------------------------------------------------

    async def stat(self, path: str) -> FileInfo:
        key = self._key(path)

        def st() -> FileInfo:
            head = self._head(key)
            if head is not None:
                modified = head["LastModified"].timestamp()
                return FileInfo(path, int(head["ContentLength"]), modified, False)
            pending = self._head(key + STATE_SUFFIX)
            if pending is not None:
                size = int(pending.get("Metadata", {}).get("regd-size", 0))
                return FileInfo(path, size, pending["LastModified"].timestamp(), False)
            page = self._call("list_objects_v2", Prefix=key + "/", MaxKeys=1)
            contents = page.get("Contents") or []
            if contents:
                return FileInfo(path, 0, contents[0]["LastModified"].timestamp(), True)
            raise PathNotFound(path)

        return await self._run(path, st)

    async def list(self, path: str) -> list[str]:
        key = self._key(path) + "/"

        def ls() -> list[str]:
            names: set[str] = set()
            token: str | None = None
            while True:
                kwargs = {"ContinuationToken": token} if token else {}
                page = self._call(
                    "list_objects_v2", Prefix=key, Delimiter="/", MaxKeys=1000, **kwargs
                )
                for entry in page.get("CommonPrefixes") or []:
                    names.add(entry["Prefix"][len(key) :].rstrip("/"))
                for entry in page.get("Contents") or []:
                    name = entry["Key"][len(key) :]
                    names.add(name.removesuffix(STATE_SUFFIX))
                if not page.get("IsTruncated"):
                    break
                token = page["NextContinuationToken"]
            names.discard("")
            if not names:
                raise PathNotFound(path)
            return sorted(names)

        return await self._run(path, ls)

    # -- moving and deleting -------------------------------------------------------------

    async def move(self, source: str, destination: str) -> None:
        src, dst = self._key(source), self._key(destination)

        def mv() -> None:
            head = self._materialize(src)
            if head is None:
                raise PathNotFound(source)
            if src == dst:
                return
            self._copy(src, dst, int(head["ContentLength"]), head["ETag"])
            # A pending state left at the destination would shadow the new object.
            self._delete_keys([src, dst + STATE_SUFFIX])

        await self._run(source, mv)

    def _copy(self, src: str, dst: str, size: int, etag: str) -> None:
        source = {"Bucket": self.bucket, "Key": src}
        if size <= self.options.copy_threshold:
            self._call(
                "copy_object", Key=dst, CopySource=source, CopySourceIfMatch=etag, **self._extra
            )
            return
        piece = min(MAX_PART, max(self._chunk, math.ceil(size / MAX_PARTS)))
        upload = self._start_upload(dst)
        try:
            parts = []
            for number, start in enumerate(range(0, size, piece), 1):
                end = min(start + piece, size)
                result = self._call(
                    "upload_part_copy",
                    Key=dst,
                    UploadId=upload,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end - 1}",
                    CopySourceIfMatch=etag,
                )
                parts.append({"PartNumber": number, "ETag": result["CopyPartResult"]["ETag"]})
            self._call(
                "complete_multipart_upload",
                Key=dst,
                UploadId=upload,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._abort(dst, upload)
            raise

    def _tree_keys(self, key: str) -> builtins.list[str]:
        """Every key that makes up the file or tree at `key`."""
        found: builtins.list[str] = []
        token: str | None = None
        while True:
            kwargs = {"ContinuationToken": token} if token else {}
            page = self._call("list_objects_v2", Prefix=key, MaxKeys=1000, **kwargs)
            for entry in page.get("Contents") or []:
                name = entry["Key"]
                if name in (key, key + STATE_SUFFIX) or name.startswith(key + "/"):
                    found.append(name)
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def _abort_pending(self, keys: Sequence[str]) -> None:
        """Abort the multipart uploads of the pending files among `keys`."""
        for name in keys:
            if not name.endswith(STATE_SUFFIX):
                continue
            head = self._head(name)
            upload = (head or {}).get("Metadata", {}).get("regd-upload")
            if upload:
                self._abort(name.removesuffix(STATE_SUFFIX), upload)

    def _orphan_uploads(self, key: str) -> builtins.list[tuple[str, str, float]]:
        """Multipart uploads (key, id, initiated) at `key` or below it."""
        found = []
        marker: dict[str, str] = {}
        while True:
            page = self._call("list_multipart_uploads", Prefix=key, **marker)
            for entry in page.get("Uploads") or []:
                name = entry["Key"]
                if name == key or name.startswith(key + "/"):
                    found.append((name, entry["UploadId"], entry["Initiated"].timestamp()))
            if not page.get("IsTruncated"):
                return found
            marker = {
                "KeyMarker": page.get("NextKeyMarker", ""),
                "UploadIdMarker": page.get("NextUploadIdMarker", ""),
            }

    async def delete(self, path: str) -> None:
        key = self._key(path)

        def rm() -> None:
            keys = self._tree_keys(key)
            self._abort_pending(keys)
            # Uploads a writer started but never committed have no state object.
            uploads = self._orphan_uploads(key)
            for name, upload, _ in uploads:
                self._abort(name, upload)
            if not keys and not uploads:
                raise PathNotFound(path)
            self._delete_keys(keys)

        await self._run(path, rm)

    async def delete_many(self, paths: Sequence[str]) -> None:
        keys = [self._key(p) for p in paths]
        found: builtins.list[str] = []

        async def collect(key: str, path: str) -> None:
            found.extend(await self._run(path, self._tree_keys, key))

        async with trio.open_nursery() as nursery:
            for key, path in zip(keys, paths, strict=True):
                nursery.start_soon(collect, key, path)
        if found:
            await self._run(paths[0], self._abort_pending, found)
            await self._run(paths[0], self._delete_keys, sorted(set(found)))

    async def purge_incomplete(self, older_than: float) -> int:
        """Abort multipart uploads started before `older_than` (UNIX time) that no
        pending file refers to: what a writer leaves when its process dies before its
        first commit. Returns how many were aborted."""
        root = self._prefix + "/" if self._prefix else ""

        def purge() -> int:
            aborted = 0
            marker: dict[str, str] = {}
            while True:
                page = self._call("list_multipart_uploads", Prefix=root, **marker)
                for entry in page.get("Uploads") or []:
                    if entry["Initiated"].timestamp() >= older_than:
                        continue
                    head = self._head(entry["Key"] + STATE_SUFFIX)
                    if (
                        head is not None
                        and head.get("Metadata", {}).get("regd-upload") == (entry["UploadId"])
                    ):
                        continue
                    self._abort(entry["Key"], entry["UploadId"])
                    aborted += 1
                if not page.get("IsTruncated"):
                    return aborted
                marker = {
                    "KeyMarker": page.get("NextKeyMarker", ""),
                    "UploadIdMarker": page.get("NextUploadIdMarker", ""),
                }

        return await self._run(root or self.bucket, purge)

    # -- elsewhere -----------------------------------------------------------------------

    async def redirect_url(self, path: str) -> str | None:
        if not self.options.redirect:
            return None
        key = self._key(path)
        url: str = await self._run(
            path,
            self._client.generate_presigned_url,
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=int(self.options.redirect_expiry),
        )
        return url

    async def free_space(self) -> None:
        return None

    async def check(self) -> None:
        """Fail with one clear StorageError when the bucket cannot be used."""
        from botocore.exceptions import ClientError

        def head() -> None:
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code"))
                if code in ("404", "NoSuchBucket", "NotFound"):
                    raise StorageError(f"bucket {self.bucket} does not exist") from None
                if code in _DENIED:
                    raise StorageError(
                        f"access to bucket {self.bucket} denied ({code}): check the "
                        "credentials and the bucket's policy"
                    ) from None
                raise

        await self._run(self.bucket, head)

    def close(self) -> None:
        self._client.close()
