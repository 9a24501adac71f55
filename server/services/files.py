"""FileService: stored files of the caller (its API key name), contents in the object
directory. Ids are checked against their one shape before any lookup, and another
owner's id answers exactly like a missing one (NOT_FOUND, same message)."""
from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import grpc

from genapi.v1 import file_service_pb2 as pb
from genapi.v1 import file_service_pb2_grpc as pb_grpc

from ..errors import GenapiError, abort, invalid, not_found, quote
from ..interceptors.auth import current_owner
from ..store import FileRecord, Store

FILE_ID = re.compile(r"file-[0-9a-f]{32}")
MAX_FILENAME_CHARS = 255
MAX_PAGE = 10_000
log = logging.getLogger("genapi.files")

PURPOSES = {
    pb.FILE_PURPOSE_BATCH: "batch",
    pb.FILE_PURPOSE_BATCH_OUTPUT: "batch_output",
    pb.FILE_PURPOSE_USER_DATA: "user_data",
    pb.FILE_PURPOSE_ASSISTANTS: "assistants",
    pb.FILE_PURPOSE_VISION: "vision",
}
PURPOSE_ENUM = {v: k for k, v in PURPOSES.items()}
STATUS_ENUM = {"uploaded": pb.FILE_STATUS_UPLOADED, "processed": pb.FILE_STATUS_PROCESSED,
               "error": pb.FILE_STATUS_ERROR}


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def file_not_found(file_id: str, param: str = "file_id") -> GenapiError:
    return not_found(f"No such File object: {quote(file_id)}", param, "file_not_found")


def file_proto(rec: FileRecord) -> pb.File:
    return pb.File(id=rec.id, bytes=rec.bytes, created_at=rec.created_at, filename=rec.filename,
                   purpose=PURPOSE_ENUM.get(rec.purpose, pb.FILE_PURPOSE_UNSPECIFIED),
                   status=STATUS_ENUM.get(rec.status, pb.FILE_STATUS_UNSPECIFIED))


async def lookup_file(store: Store, owner: str, file_id: str, param: str = "file_id") -> FileRecord:
    """The owner's live file, or NOT_FOUND (also for ids of another shape)."""
    rec = await asyncio.to_thread(store.get_file, owner, file_id) if FILE_ID.fullmatch(file_id) else None
    if rec is None:
        raise file_not_found(file_id, param)
    return rec


class FileServicer(pb_grpc.FileServiceServicer):
    def __init__(self, store: Store, objects, max_upload_bytes: int):
        """`objects`: store.LocalObjects or store.S3Objects."""
        self.store = store
        self.objects = objects
        self.max_upload_bytes = max_upload_bytes

    async def UploadFile(self, request_iterator, context):
        owner = current_owner()
        writer = None
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None or first.WhichOneof("payload") != "metadata":
                raise invalid("The first UploadFile message must carry `metadata`.", "metadata")
            meta = first.metadata
            if meta.purpose not in PURPOSES:
                raise invalid("Invalid 'purpose': expected one of " + ", ".join(
                    p for p in PURPOSES.values() if p != "batch_output") + ".", "purpose")
            if meta.purpose == pb.FILE_PURPOSE_BATCH_OUTPUT:
                raise invalid("Files of purpose 'batch_output' are written by batches only.", "purpose")
            if not meta.filename or len(meta.filename) > MAX_FILENAME_CHARS:
                raise invalid(f"The file name must have 1 to {MAX_FILENAME_CHARS} characters.", "file")
            file_id = new_file_id()
            writer = await asyncio.to_thread(self.objects.writer, file_id)
            async for msg in request_iterator:
                if msg.WhichOneof("payload") != "chunk":
                    raise invalid("Only the first UploadFile message may carry `metadata`.", "metadata")
                if writer.size + len(msg.chunk) > self.max_upload_bytes:
                    raise GenapiError(grpc.StatusCode.INVALID_ARGUMENT, f"The file is larger than the limit of "
                                      f"{self.max_upload_bytes} bytes.", "file_too_large", "file")
                await asyncio.to_thread(writer.write, msg.chunk)
            await asyncio.to_thread(writer.commit)
            size, writer = writer.size, None
            rec = FileRecord(file_id, owner, meta.filename, PURPOSES[meta.purpose], size, int(time.time()))
            await asyncio.to_thread(self.store.put_file, rec)
            return pb.UploadFileResponse(file=file_proto(rec))
        except GenapiError as e:
            await abort(context, e)
        finally:
            if writer is not None:
                writer.abort()

    async def GetFile(self, request, context):
        try:
            return pb.GetFileResponse(file=file_proto(await lookup_file(self.store, current_owner(), request.id)))
        except GenapiError as e:
            await abort(context, e)

    async def ListFiles(self, request, context):
        size = request.page_size if request.HasField("page_size") else MAX_PAGE
        if not 1 <= size <= MAX_PAGE:
            await abort(context, invalid(f"Invalid 'limit': expected 1 to {MAX_PAGE}.", "limit"))
        purpose = PURPOSES.get(request.purpose)
        ascending = request.order == pb.SORT_ORDER_ASCENDING
        recs = await asyncio.to_thread(self.store.list_files, current_owner(), purpose, request.page_token or None,
                                       size + 1, ascending)
        out = pb.ListFilesResponse(files=[file_proto(r) for r in recs[:size]])
        if len(recs) > size:
            out.next_page_token = recs[size - 1].id
        return out

    async def DeleteFile(self, request, context):
        try:
            rec = await lookup_file(self.store, current_owner(), request.id)
            if not await asyncio.to_thread(self.store.delete_file, rec.owner, rec.id):
                raise file_not_found(request.id)
            await asyncio.to_thread(self.objects.delete, rec.id)
            return pb.DeleteFileResponse(id=rec.id)
        except GenapiError as e:
            await abort(context, e)

    async def DownloadFile(self, request, context):
        try:
            rec = await lookup_file(self.store, current_owner(), request.id)
        except GenapiError as e:
            await abort(context, e)
            return
        chunks = self.objects.chunks(rec.id)
        try:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                await context.write(pb.DownloadFileResponse(chunk=chunk))
        except FileNotFoundError:  # the record outlived its object (deleted from the bucket or disk)
            log.warning("file %s: its content is missing from the object storage", rec.id)
            await abort(context, not_found(f"The content of file {quote(rec.id)} is no longer stored.", "file_id",
                                           "file_not_found"))
