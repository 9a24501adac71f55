"""/v1/files: upload (multipart, streamed to the core in chunks), list, get, delete, and
content (streamed from the core's server-streaming download). Ids are opaque: the core
answers 404 for anything that is not one of the caller's live files."""
from __future__ import annotations

import logging
import os

import grpc
from flask import Blueprint, Response, request

from genapi.v1 import file_service_pb2 as pb
from shim.errors import from_grpc_error, json_response
from shim.multipart import parse_upload, single_file, too_large
from shim.protocol.files import (
    LIST_PURPOSES,
    MAX_FILES_LIMIT,
    query_int,
    query_order,
    validate_filename,
    validate_purpose,
)
from shim.routes.common import config, core, metadata, unary
from shim.translate.files import file_list_to_dict, file_to_dict, list_request, upload_messages

bp = Blueprint("files", __name__)
log = logging.getLogger("genapi.shim")


@bp.post("/v1/files")
def upload_file():
    cap = config().max_upload_mb * 1024 * 1024
    form, files = parse_upload(request.environ, cap, framing=64 * 1024)
    purpose = validate_purpose(form.get("purpose"))
    upload = single_file(files)
    filename = validate_filename(os.path.basename(upload.filename or ""))
    upload.stream.seek(0, os.SEEK_END)
    if upload.stream.tell() > cap:
        raise too_large(cap)
    upload.stream.seek(0)
    reply = unary(core().files.UploadFile, upload_messages(filename, purpose, upload.stream),
                  timeout=config().request_timeout_s)
    return json_response(file_to_dict(reply.file))


@bp.get("/v1/files")
def list_files():
    args = request.args
    purpose = validate_purpose(args["purpose"], LIST_PURPOSES) if args.get("purpose") else None
    req = list_request(purpose, args.get("after"), query_int(args, "limit", MAX_FILES_LIMIT, MAX_FILES_LIMIT),
                       query_order(args))
    return json_response(file_list_to_dict(unary(core().files.ListFiles, req)))


@bp.get("/v1/files/<file_id>")
def get_file(file_id: str):
    return json_response(file_to_dict(unary(core().files.GetFile, pb.GetFileRequest(id=file_id)).file))


@bp.delete("/v1/files/<file_id>")
def delete_file(file_id: str):
    reply = unary(core().files.DeleteFile, pb.DeleteFileRequest(id=file_id))
    return json_response({"id": reply.id, "object": "file", "deleted": True})


@bp.get("/v1/files/<file_id>/content")
def file_content(file_id: str):
    call = core().files.DownloadFile(pb.DownloadFileRequest(id=file_id), metadata=metadata(),
                                     timeout=config().request_timeout_s)
    try:
        first = next(call, None)  # a missing file fails here, before any byte is sent
    except grpc.RpcError as e:
        raise from_grpc_error(e) from None

    def body():
        try:
            if first is not None:
                yield first.chunk
            for msg in call:
                yield msg.chunk
        except grpc.RpcError as e:  # the status line is out: the client sees a short body
            log.warning("file download %s failed mid-way: %s", file_id, e.code())
        finally:
            call.cancel()

    return Response(body(), mimetype="application/octet-stream")
