"""Pure OpenAI <-> genapi.v1 FileService translation."""
from __future__ import annotations

from genapi.v1 import file_service_pb2 as pb

PURPOSES = {
    "batch": pb.FILE_PURPOSE_BATCH, "batch_output": pb.FILE_PURPOSE_BATCH_OUTPUT,
    "user_data": pb.FILE_PURPOSE_USER_DATA, "assistants": pb.FILE_PURPOSE_ASSISTANTS,
    "vision": pb.FILE_PURPOSE_VISION,
}
PURPOSE_NAMES = {v: k for k, v in PURPOSES.items()}
STATUS_NAMES = {pb.FILE_STATUS_UPLOADED: "uploaded", pb.FILE_STATUS_PROCESSED: "processed",
                pb.FILE_STATUS_ERROR: "error"}
UPLOAD_CHUNK = 1024 * 1024


def file_to_dict(f: pb.File) -> dict:
    """The OpenAI `file` object."""
    return {"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at, "filename": f.filename,
            "purpose": PURPOSE_NAMES.get(f.purpose, "user_data"), "status": STATUS_NAMES.get(f.status, "processed"),
            "expires_at": None, "status_details": None}


def file_list_to_dict(reply: pb.ListFilesResponse) -> dict:
    data = [file_to_dict(f) for f in reply.files]
    return list_page(data, bool(reply.next_page_token))


def list_page(data: list[dict], has_more: bool) -> dict:
    """An OpenAI cursor page: `{"object": "list", "data", "first_id", "last_id", "has_more"}`."""
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}


def list_request(purpose: str | None, after: str | None, limit: int, order: str) -> pb.ListFilesRequest:
    return pb.ListFilesRequest(purpose=PURPOSES.get(purpose or "", pb.FILE_PURPOSE_UNSPECIFIED), page_size=limit,
                               page_token=after or "",
                               order=pb.SORT_ORDER_ASCENDING if order == "asc" else pb.SORT_ORDER_DESCENDING)


def upload_messages(filename: str, purpose: str, stream, chunk: int = UPLOAD_CHUNK):
    """UploadFile's request stream: metadata, then the content of `stream` in chunks."""
    yield pb.UploadFileRequest(metadata=pb.UploadFileMetadata(filename=filename, purpose=PURPOSES[purpose]))
    while data := stream.read(chunk):
        yield pb.UploadFileRequest(chunk=data)
