"""Bearer tokens and what each role may call.

Every call carries `authorization: Bearer <token>` metadata. A job token may post tasks and
read labels (and stats); a labeler token may only lease and label (a lease tells the labeler
their own count). The standard health service needs no token, so supervisors can probe it.
"""
from __future__ import annotations

import hmac
from dataclasses import dataclass

import grpc

SERVICE = "/rlhf_dist.ingest.ComparisonIngest/"
HEALTH_PREFIX = "/grpc.health.v1.Health/"
JOB, LABELER = "job", "labeler"
ROLES_ALLOWED = {
    SERVICE + "PostTasks": {JOB},
    SERVICE + "ReadLabels": {JOB},
    SERVICE + "Lease": {LABELER},
    SERVICE + "SubmitLabels": {LABELER},
    SERVICE + "Stats": {JOB},
}
METADATA_KEY = "authorization"


@dataclass(frozen=True)
class AccessConfig:
    job_tokens: tuple[str, ...] = ()
    labeler_tokens: tuple[str, ...] = ()

    def roles_of(self, token: str) -> set[str]:
        """Compare against every token in constant time, so timing reveals no prefix."""
        roles = set()
        for role, tokens in ((JOB, self.job_tokens), (LABELER, self.labeler_tokens)):
            for known in tokens:
                if hmac.compare_digest(token.encode(), known.encode()):
                    roles.add(role)
        return roles


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying a token (what the client sends)."""
    return ((METADATA_KEY, f"Bearer {token}"),)


def check(access: AccessConfig, method: str, metadata) -> tuple[grpc.StatusCode, str] | None:
    """None when the call may proceed, else the status code and message to refuse it with."""
    if method.startswith(HEALTH_PREFIX):
        return None
    header = dict(metadata or ()).get(METADATA_KEY, "")
    if not header.startswith("Bearer ") or not header[len("Bearer "):]:
        return grpc.StatusCode.UNAUTHENTICATED, "no bearer token in the authorization metadata"
    roles = access.roles_of(header[len("Bearer "):])
    if not roles:
        return grpc.StatusCode.UNAUTHENTICATED, "unknown token"
    allowed = ROLES_ALLOWED.get(method)
    if allowed is not None and not roles & allowed:
        return (grpc.StatusCode.PERMISSION_DENIED,
                f"a {'/'.join(sorted(roles))} token may not call {method.rsplit('/', 1)[-1]}")
    return None  # allowed, or an unknown method that gRPC answers UNIMPLEMENTED


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, access: AccessConfig):
        self._access = access

    def intercept_service(self, continuation, handler_call_details):
        refusal = check(self._access, handler_call_details.method,
                        handler_call_details.invocation_metadata)
        if refusal is None:
            return continuation(handler_call_details)
        code, message = refusal

        def refuse(request, context):  # request stays raw bytes: nothing is parsed
            context.abort(code, message)
        return grpc.unary_unary_rpc_method_handler(refuse)
