"""Errors a caller can cause or must handle, each with an HTTP status and a stable code.

The HTTP layer turns any KvError into `{"error": code, "message": text}` with
its status. Broken invariants are asserts, not KvErrors.
"""
from __future__ import annotations


class KvError(Exception):
    status = 500
    code = "internal"
    shown = ()  # the names of details that the JSON answer carries beside error and message

    def __init__(self, message: str = "", **details: object) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code.replace("_", " ")
        self.details = details


class BadRequest(KvError):
    status, code = 400, "bad_request"


class InvalidKey(BadRequest):
    code = "invalid_key"


class InvalidJson(BadRequest):
    code = "invalid_json"


class NotFound(KvError):
    status, code = 404, "not_found"


class PreconditionFailed(KvError):
    status, code = 412, "precondition_failed"


class ValueTooLarge(KvError):
    status, code = 413, "value_too_large"


class MemberChangeRefused(KvError):
    """A membership change the configuration refused; `code` says why (409, or 404 for
    a node that is not a member)."""

    status, code = 409, "member_change_refused"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = 404 if code in ("not_a_member", "not_a_learner") else 409


class LeaseNotFound(NotFound):
    code = "lease_not_found"


class LeaseConflict(KvError):
    """A lease command or a put with a lease that the store refused (409); `code` says
    why: lease_exists, lease_full, key_has_lease, lease_ids_exhausted."""

    status, code = 409, "lease_conflict"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NoQuorum(KvError):
    """No leader could be reached; the command was certainly not applied."""

    status, code = 503, "no_quorum"


class Overloaded(KvError):
    """The node holds as many commands waiting for their outcome as it takes
    (`kv serve --max-pending-bytes`): the command was certainly not applied; retry later."""

    status, code = 503, "overloaded"


class OutcomeUnknown(KvError):
    """The command may or may not have been applied (leader lost, timeout)."""

    status, code = 504, "timeout"
