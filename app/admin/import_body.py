"""Validation of an import body off the event loop, in slices, and the schema the route documents for it."""

from __future__ import annotations

from typing import Any, cast

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, core_schema

from app.admin.transfer import IMPORTING, ExportDocument, ExportedAudit, ExportedMessage, check_readable
from app.errors import InvalidInput


class InvalidDocument(InvalidInput):
    """An import body is not an export document; errors are pydantic's, located from the body's root."""

    code = "validation_error"

    def __init__(self, errors: list[ErrorDetails]):
        super().__init__(errors[0]["msg"] if errors else "invalid export document")
        self.errors = errors


# Items validated per pydantic call. A call holds the GIL throughout (a 16 MB document
# took 1.2 s in one), so a big document is validated in slices: other threads, and the
# event loop, run in between.
CHUNK = 200
_ITEMS: dict[str, TypeAdapter[list[Any]]] = {
    "messages": TypeAdapter(list[ExportedMessage]),
    "audit": TypeAdapter(list[ExportedAudit]),
}


def parse_document(data: Any) -> ExportDocument:
    """Validate a decoded JSON import body as an ExportDocument (IMPORTING rules); CPU work, call it off the loop.

    Raises InvalidDocument. A document's format version is judged first; in a document of
    more than CHUNK messages or audit rows, their errors are reported before the other fields'.
    """
    try:
        if isinstance(data, dict):
            check_readable(data)
            data = data | {
                name: _slices(name, data[name])
                for name in _ITEMS
                if isinstance(data.get(name), list) and len(data[name]) > CHUNK
            }
        return ExportDocument.model_validate(data, context=IMPORTING)
    except ValidationError as err:
        raise InvalidDocument(err.errors()) from None
    except InvalidDocument:  # from _slices()
        raise
    except ValueError as err:  # from check_readable(): the whole document
        raise InvalidDocument(
            [{"type": "value_error", "loc": (), "msg": f"Value error, {err}", "input": data, "ctx": {"error": err}}]
        ) from None


def _slices(name: str, items: list[Any]) -> list[Any]:
    validated: list[Any] = []
    for start in range(0, len(items), CHUNK):
        try:
            validated += _ITEMS[name].validate_python(items[start : start + CHUNK], context=IMPORTING)
        except ValidationError as err:
            # A list adapter's errors are located from the slice's root: their loc starts with the item's index.
            errors = [e | {"loc": (name, start + cast(int, e["loc"][0]), *e["loc"][1:])} for e in err.errors()]
            raise InvalidDocument(errors) from None
    return validated


class DocumentBody:
    """Annotation of the import route's body: FastAPI takes any JSON (parse_document validates it
    in the threadpool) but documents ExportDocument's schema."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.any_schema()

    def __get_pydantic_json_schema__(self, schema: Any, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        return handler(ExportDocument.__pydantic_core_schema__)
