"""Objects on any S3 endpoint through boto3, and `s3://bucket/key` URLs (Scaleway-style
batch inputs, with results written beside them).

Credentials, region and endpoint come from the standard AWS environment and config files
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL, ~/.aws/config); nothing here logs or shows them. A single PUT is
atomic on S3 (readers see the old object or the whole new one), so a writer spools to a
local temporary file and uploads it on commit. Result files use a conditional put
(If-None-Match: *): a finalize that runs again finds the object there and, content being
derived from the store, leaves it as it is.
"""
from __future__ import annotations

import hashlib
import logging
import tempfile
from typing import Iterator

log = logging.getLogger("genapi.store")

CHUNK = 1024 * 1024


def _client():
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise RuntimeError("S3 storage needs boto3: pip install 'genapi[s3]'") from None
    # An endpoint that refuses or does not answer fails a call within a few seconds
    # (store.outage: 503 for clients, a retry later for runners), not after minutes.
    return boto3.client("s3", config=Config(connect_timeout=3, read_timeout=60,
                                            retries={"max_attempts": 2, "mode": "standard"}))


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key); ValueError when it is not one."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, key


def beside(url: str, kind: str) -> str:
    """Where a batch writes its `kind` ("output", "error") results for input `url`:
    s3://b/dir/in.jsonl -> s3://b/dir/in-output.jsonl."""
    stem = url[:-len(".jsonl")] if url.endswith(".jsonl") else url
    return f"{stem}-{kind}.jsonl"


def _missing(e) -> bool:
    return getattr(e, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


class S3Url:
    """Whole-object reads and conditional writes of s3:// URLs."""

    def __init__(self, client=None):
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = _client()
        return self._client

    def exists(self, url: str) -> bool:
        bucket, key = split_url(url)
        try:
            self.client.head_object(Bucket=bucket, Key=key)
            return True
        except Exception as e:
            if _missing(e):
                return False
            raise

    def read(self, url: str) -> bytes:
        """The object's bytes; FileNotFoundError when it does not exist."""
        bucket, key = split_url(url)
        try:
            return self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as e:
            if _missing(e):
                raise FileNotFoundError(url) from None
            raise

    def put_once(self, url: str, data: bytes) -> None:
        """Writes `data` unless the object already holds it (conditional put); an object
        with other content (not ours) is replaced, with a warning."""
        bucket, key = split_url(url)
        try:
            self.client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return
        except Exception as e:
            if getattr(e, "response", {}).get("Error", {}).get("Code") not in ("PreconditionFailed", "412"):
                raise
        if self.read(url) == data:
            return  # written by an earlier finalize of the same batch
        log.warning("replacing %s: it held other content than this batch's results", url)
        self.client.put_object(Bucket=bucket, Key=key, Body=data)


class S3Writer:
    def __init__(self, client, bucket: str, key: str):
        self._client, self._bucket, self._key = client, bucket, key
        self._f = tempfile.TemporaryFile()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self.size += len(data)

    def commit(self) -> None:
        self._f.seek(0)
        try:
            self._client.put_object(Bucket=self._bucket, Key=self._key, Body=self._f)
        finally:
            self._f.close()

    def abort(self) -> None:
        self._f.close()


class S3Objects:
    """The object-directory interface (see objects.LocalObjects) on `s3://bucket/prefix`:
    an id's object key is the prefix plus the SHA-256 of the id."""

    def __init__(self, url: str, client=None):
        self.bucket, prefix = split_url(url)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._urls = S3Url(client)

    def check(self) -> None:
        """Whether the bucket exists and these credentials may use it (HeadBucket), for the
        core's start: raises ValueError saying which it is not, or what the endpoint
        answered (unreachable, refused)."""
        try:
            self._urls.client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise ValueError(f"the bucket {self.bucket!r} does not exist") from None
            if code in ("403", "AccessDenied", "Forbidden"):
                raise ValueError(f"access to the bucket {self.bucket!r} is denied (credentials?)") from None
            raise ValueError(f"the bucket {self.bucket!r} cannot be reached: {' '.join(str(e).split())}") from None

    def key(self, object_id: str) -> str:
        return self.prefix + hashlib.sha256(object_id.encode()).hexdigest()

    def writer(self, object_id: str) -> S3Writer:
        return S3Writer(self._urls.client, self.bucket, self.key(object_id))

    def put(self, object_id: str, chunks) -> int:
        data = b"".join(chunks)
        self._urls.put_once(f"s3://{self.bucket}/{self.key(object_id)}", data)
        return len(data)

    def read(self, object_id: str) -> bytes:
        return self._urls.read(f"s3://{self.bucket}/{self.key(object_id)}")

    def chunks(self, object_id: str, size: int = CHUNK) -> Iterator[bytes]:
        """The object's bytes in chunks; FileNotFoundError (at the first) when it does not
        exist, like LocalObjects."""
        try:
            body = self._urls.client.get_object(Bucket=self.bucket, Key=self.key(object_id))["Body"]
        except Exception as e:
            if _missing(e):
                raise FileNotFoundError(object_id) from None
            raise
        try:
            while chunk := body.read(size):
                yield chunk
        finally:
            body.close()

    def delete(self, object_id: str) -> None:
        self._urls.client.delete_object(Bucket=self.bucket, Key=self.key(object_id))
