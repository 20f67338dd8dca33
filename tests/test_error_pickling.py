"""Every exception of flrt, security and transport survives ``pickle``: a service that runs flrt in
worker processes (``multiprocessing``, ``concurrent.futures``) gets the error back in the parent
with its type, its message and its structured fields, not a ``TypeError`` from the unpickler.

Each class is built from representative arguments (:data:`EXAMPLES`); a class with no example fails
the test, so a new error cannot be added without being checked here.
"""

from __future__ import annotations

import datetime as dt
import inspect
import pickle
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import flrt.admin
import flrt.errors
import security.errors
import transport.errors
from flrt.admin import ServerUnreachableError
from flrt.errors import (
    AdminError,
    AggregationError,
    AggregatorStateError,
    CheckpointError,
    ConfigError,
    DatasetError,
    FilterError,
    FlrtError,
    IncompatibleWeightsError,
    JobError,
    JobRecordError,
    JobStateError,
    ModelFileError,
    NodeProtocolError,
    QuorumError,
    RoundFailedError,
    TrainerError,
    TrainerLoadError,
    TrainerOutputError,
    TrainingAbortedError,
    UpdateError,
    WorkflowError,
    WorkflowStalledError,
    WorkspaceInUseError,
)
from security.errors import (
    AdmissionError,
    CertificateError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateRevokedError,
    KitError,
    KitTamperedError,
    KitValidityError,
    MalformedPeerCertificateError,
    ProjectFileError,
    RoleMismatchError,
    SealError,
    SealFormatError,
    SealPasswordError,
    SecurityError,
    UnknownIssuerError,
    UnknownParticipantError,
    WorkspaceError,
)
from transport.errors import (
    ActorError,
    AskTimeoutError,
    CertificateProblem,
    ConnectionBrokenError,
    ConnectionClosedError,
    DigestMismatchError,
    FrameTooLargeError,
    HandshakeError,
    HandshakeFailure,
    LocalProtocolError,
    ObjectError,
    PeerTimeoutError,
    RemoteActorError,
    RemoteProtocolError,
    ResumeRefusedError,
    TransportError,
    UnknownActorError,
    UnknownFrameKindError,
    VersionError,
)

MODULES: tuple[ModuleType, ...] = (flrt.errors, security.errors, transport.errors, flrt.admin)

_WHEN = dt.datetime(2026, 1, 2, 3, 4, tzinfo=dt.UTC)

#: One or more instances of every exception class of :data:`MODULES`, built as the code builds them.
EXAMPLES: list[BaseException] = [
    # flrt.errors
    FlrtError("something failed"),
    ConfigError("expected a number", path="/etc/flrt/node.toml", key="server.port"),
    ConfigError("no path, no key"),
    WorkspaceInUseError(Path("/srv/flrt"), 4242),
    WorkspaceInUseError(Path("/srv/flrt"), None),
    ModelFileError("truncated header", path="model.safetensors", tensor="w"),
    IncompatibleWeightsError("w", expected="float32 (2, 3)", got="missing"),
    TrainerError("cannot import", spec="pkg.mod:Trainer"),
    TrainerLoadError("no attribute 'Trainer'", spec="pkg.mod:Trainer"),
    TrainerOutputError("returned a list", method="train", spec="pkg.mod:Trainer"),
    TrainingAbortedError("the job was aborted"),
    DatasetError("no such column 'age'"),
    JobError("must be at least 1", path="job.toml", key="workflow.rounds"),
    JobRecordError("not a job record: missing field 'name'", path="jobs/x/record.json"),
    JobStateError("job-1", current="finished", requested="running"),
    AggregationError("no update"),
    UpdateError("wrong shape", site="site-1", variable="w"),
    AggregatorStateError("accept before open"),
    WorkflowError("cannot complete"),
    RoundFailedError(3, "quorum not reached: 1 of 2"),
    QuorumError("sites asked after the round closed"),
    WorkflowStalledError("every site is idle"),
    CheckpointError("digest mismatch", path="/srv/flrt/jobs/job-1/checkpoints"),
    FilterError("refused", filter="clip"),
    NodeProtocolError("no 'op'", peer="site-1"),
    AdminError("no job 'x'", command="wait", code="unknown_job"),
    AdminError("rounds: must be positive", command="submit", code="invalid_job", key="rounds"),
    # security.errors
    SecurityError("something failed"),
    CertificateError("expired", subject="CN=site-1"),
    ProjectFileError("project.toml", "server.port", "expected a port"),
    WorkspaceError("/ws", "busy"),
    KitError("/kits/site-1", "not a startup kit"),
    KitTamperedError("/kits/site-1", "startup/node.toml", "changed"),
    KitValidityError("/kits/site-1", state="expired", not_before=_WHEN, not_after=_WHEN, now=_WHEN),
    SealError("cannot open"),
    SealFormatError("not a sealed kit"),
    SealPasswordError("wrong password or damaged archive"),
    AdmissionError("no identity", subject="CN=x"),
    MalformedPeerCertificateError("cannot parse"),
    UnknownIssuerError("another CA", subject="CN=x"),
    CertificateExpiredError("expired", subject="CN=x"),
    CertificateNotYetValidError("not yet", subject="CN=x"),
    CertificateRevokedError("serial 12", subject="CN=x"),
    UnknownParticipantError("who?", subject="CN=x"),
    RoleMismatchError("a site on the admin port", subject="CN=x"),
    # transport.errors
    TransportError("something failed"),
    LocalProtocolError("send on a closed session"),
    RemoteProtocolError("bad frame"),
    FrameTooLargeError(10, 5),
    UnknownFrameKindError(99),
    VersionError(3, 1),
    HandshakeError(
        "certificate verification failed",
        kind=HandshakeFailure.PEER_CERTIFICATE,
        certificate=CertificateProblem.FOREIGN_CA,
    ),
    HandshakeError("alert", kind=HandshakeFailure.TLS_ALERT, alert="unknown_ca"),
    ResumeRefusedError("unknown session", undelivered=[4, 5]),
    ConnectionClosedError("closed"),
    ConnectionBrokenError("reset by peer"),
    PeerTimeoutError(2.5),
    AskTimeoutError("server/admin", 60),
    ActorError("failed"),
    UnknownActorError("server/nothing"),
    RemoteActorError("server/admin", "ValueError", "bad"),
    ObjectError("failed"),
    DigestMismatchError(7),
    # flrt.admin
    ServerUnreachableError(
        {"127.0.0.1:8443": "connection refused", "[::1]:8443": "timed out"},
        elapsed=2.5,
        attempts=3,
        final=False,
        last=ConnectionBrokenError("connection refused"),
    ),
    ServerUnreachableError(
        {"server.example:8443": "certificate verification failed"},
        elapsed=0.1,
        attempts=1,
        final=True,
        last=HandshakeError(
            "certificate verification failed",
            kind=HandshakeFailure.PEER_CERTIFICATE,
            certificate=CertificateProblem.FOREIGN_CA,
        ),
        foreign_ca=True,
    ),
]


def _exception_classes() -> set[type[BaseException]]:
    return {
        value
        for module in MODULES
        for name, value in inspect.getmembers(module, inspect.isclass)
        if issubclass(value, BaseException)
        and value.__module__ == module.__name__
        and not name.startswith("_")  # a private base, never raised itself
    }


def _portrait(error: BaseException) -> Any:
    """What a copy must keep: the type, the message, ``args`` and every field (errors in fields are
    compared the same way, as exceptions compare by identity)."""

    def field(value: Any) -> Any:
        return _portrait(value) if isinstance(value, BaseException) else value

    return (
        type(error),
        str(error),
        error.args,
        {name: field(value) for name, value in vars(error).items()},
    )


def test_every_exception_class_has_an_example() -> None:
    assert _exception_classes() - {type(e) for e in EXAMPLES} == set()


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("protocol", [0, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL])
def test_an_error_survives_pickling(error: BaseException, protocol: int) -> None:
    copy = pickle.loads(pickle.dumps(error, protocol=protocol))
    assert _portrait(copy) == _portrait(error)
