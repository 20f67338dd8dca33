"""``project.toml``: who takes part in a project, read strictly.

The file names the project, the server (every host name or address it is reached at, its port and
optionally a separate admin port), the organisations, the sites and the admins with their roles.
Every key is checked: a missing or wrong value, or a key this version does not know, is a
:class:`~security.errors.ProjectFileError` naming the file, the dotted key (``sites[2].organisation``)
and what was expected. Nothing is written anywhere; :mod:`security.provision` acts on the result.

Names become certificate common names and folder names, so they are restricted to letters, digits
and ``. _ - @ +`` (an e-mail address is a fine admin name), at most 64 characters, and must be unique
across the project ignoring case (kits live side by side on case-insensitive file systems too).
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from security.errors import ProjectFileError
from security.pki import ADMIN_ROLES, Identity, Role

__all__ = [
    "DEFAULT_CA_VALID_DAYS",
    "DEFAULT_CERT_VALID_DAYS",
    "EXAMPLE_PROJECT",
    "Participant",
    "Project",
    "ServerSpec",
    "load_project",
    "parse_project",
]

DEFAULT_CA_VALID_DAYS = 3650
DEFAULT_CERT_VALID_DAYS = 365

_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._@+-]{0,62}[A-Za-z0-9])?$")
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_NAME_RULE = "1 to 64 letters, digits or . _ - @ +, starting and ending with a letter or digit"


@dataclass(frozen=True, slots=True)
class Participant:
    """One participant: its identity and, for the server, the host names it is reached at."""

    name: str
    organisation: str
    role: Role
    hosts: tuple[str, ...] = ()

    @property
    def identity(self) -> Identity:
        return Identity(self.name, self.organisation, self.role)


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """The server: its participant entry and where nodes reach it."""

    participant: Participant
    port: int
    admin_port: int | None

    @property
    def name(self) -> str:
        return self.participant.name

    @property
    def hosts(self) -> tuple[str, ...]:
        return self.participant.hosts


@dataclass(frozen=True, slots=True)
class Project:
    """A parsed, checked ``project.toml``."""

    name: str
    description: str
    organisations: tuple[str, ...]
    server: ServerSpec
    sites: tuple[Participant, ...]
    admins: tuple[Participant, ...]
    ca_valid_days: int = DEFAULT_CA_VALID_DAYS
    cert_valid_days: int = DEFAULT_CERT_VALID_DAYS

    @property
    def participants(self) -> tuple[Participant, ...]:
        """Every participant: the server first, then the sites, then the admins, in file order."""
        return (self.server.participant, *self.sites, *self.admins)


class _Reader:
    """Checks one TOML table: required and optional keys, types, and no unknown keys."""

    def __init__(self, path: Path, prefix: str, table: Any) -> None:
        self.path = path
        self.prefix = prefix
        if not isinstance(table, dict):
            raise ProjectFileError(path, prefix, f"expected a table, got {_kind(table)}")
        self.table: dict[str, Any] = table
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, reason: str) -> ProjectFileError:
        return ProjectFileError(self.path, self.key(name), reason)

    def raw(self, name: str, required: bool) -> Any:
        self.seen.add(name)
        if name not in self.table:
            if required:
                raise self.error(name, "is missing")
            return None
        return self.table[name]

    def string(self, name: str, *, required: bool = True, default: str = "") -> str:
        value = self.raw(name, required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {_kind(value)}")
        return value

    def name(self, name: str) -> str:
        value = self.string(name)
        if not _NAME.match(value):
            raise self.error(name, f"{value!r} is not a valid name: expected {_NAME_RULE}")
        return value

    def integer(self, name: str, low: int, high: int, *, required: bool = True) -> int | None:
        value = self.raw(name, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {_kind(value)}")
        if not low <= value <= high:
            raise self.error(name, f"expected an integer from {low} to {high}, got {value}")
        return value

    def array(self, name: str, *, required: bool = True) -> list[Any]:
        value = self.raw(name, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(name, f"expected an array, got {_kind(value)}")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise self.error(unknown[0], f"unknown key (expected one of: {known})")


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _check_host(path: Path, key: str, host: Any) -> str:
    if not isinstance(host, str):
        raise ProjectFileError(path, key, f"expected a host name or IP address, got {_kind(host)}")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise ProjectFileError(path, key, f"{host!r} is not a host name or IP address")
    if labels[-1].isdigit():  # "10.20.0", "010.20.0.5", "999.1.1.1": a mistyped address
        raise ProjectFileError(
            path, key, f"{host!r} is not an IP address, and a host name cannot end in a number"
        )
    return host.lower()


def _organisation(reader: _Reader, declared: Mapping[str, int]) -> str:
    value = reader.string("organisation")
    if value not in declared:
        listed = ", ".join(declared) or "none"
        raise reader.error(
            "organisation", f"{value!r} is not declared in [[organisations]] (declared: {listed})"
        )
    return value


def parse_project(text: str, path: Path | str = "project.toml") -> Project:
    """Parse and check the text of a ``project.toml``; ``path`` is only used in error messages.

    Raises :class:`ProjectFileError` for invalid TOML, a missing, wrong or unknown key, an
    undeclared organisation, a duplicate name, or a bad host or port.
    """
    path = Path(path)
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))  # the byte-order mark some editors add
    except tomllib.TOMLDecodeError as exc:
        raise ProjectFileError(path, None, f"not valid TOML: {exc}") from None
    top = _Reader(path, "", data)

    head = _Reader(path, "project", top.raw("project", True))
    project_name = head.name("name")
    description = head.string("description", required=False)
    ca_days = head.integer("ca_valid_days", 1, 36500, required=False) or DEFAULT_CA_VALID_DAYS
    cert_days = head.integer("cert_valid_days", 1, 36500, required=False) or DEFAULT_CERT_VALID_DAYS
    head.finish()
    if cert_days > ca_days:
        raise head.error(
            "cert_valid_days", f"{cert_days} days is longer than the CA's {ca_days} (ca_valid_days)"
        )

    declared: dict[str, int] = {}
    for index, entry in enumerate(top.array("organisations")):
        org = _Reader(path, f"organisations[{index}]", entry)
        org_name = org.string("name")
        if not org_name.strip() or len(org_name) > 64 or not org_name.isprintable():
            raise org.error("name", "expected 1 to 64 printable characters")
        org.string("description", required=False)
        org.finish()
        if org_name in declared:
            raise org.error(
                "name", f"{org_name!r} is already declared as organisations[{declared[org_name]}]"
            )
        declared[org_name] = index
    if not declared:
        raise top.error("organisations", "declare at least one organisation")

    names: dict[str, str] = {}

    def claim(reader: _Reader, name: str) -> None:
        folded = name.casefold()
        if folded in names:
            raise reader.error("name", f"{name!r} is already used by {names[folded]}")
        names[folded] = reader.prefix

    srv = _Reader(path, "server", top.raw("server", True))
    server_name = srv.name("name") if "name" in srv.table else "server"
    srv.seen.add("name")
    claim(srv, server_name)
    server_org = _organisation(srv, declared)
    raw_hosts = srv.array("hosts")
    if not raw_hosts:
        raise srv.error(
            "hosts", "list at least one host name or IP address the server is reached at"
        )
    hosts: list[str] = []
    for index, host in enumerate(raw_hosts):
        checked = _check_host(path, f"server.hosts[{index}]", host)
        if checked in hosts:
            raise ProjectFileError(path, f"server.hosts[{index}]", f"{host!r} is listed twice")
        hosts.append(checked)
    port = srv.integer("port", 1, 65535)
    admin_port = srv.integer("admin_port", 1, 65535, required=False)
    srv.finish()
    if admin_port == port:
        raise srv.error("admin_port", "must differ from server.port (or be left out to share it)")
    assert port is not None
    server = ServerSpec(
        Participant(server_name, server_org, Role.SERVER, tuple(hosts)), port, admin_port
    )

    sites: list[Participant] = []
    for index, entry in enumerate(top.array("sites", required=False)):
        site = _Reader(path, f"sites[{index}]", entry)
        name = site.name("name")
        claim(site, name)
        sites.append(Participant(name, _organisation(site, declared), Role.SITE))
        site.finish()

    admins: list[Participant] = []
    admin_roles = sorted(r.value for r in ADMIN_ROLES)
    for index, entry in enumerate(top.array("admins", required=False)):
        admin = _Reader(path, f"admins[{index}]", entry)
        name = admin.name("name")
        claim(admin, name)
        organisation = _organisation(admin, declared)
        role_text = admin.string("role")
        if role_text not in admin_roles:
            raise admin.error(
                "role",
                f"{role_text!r} is not an admin role (expected one of: {', '.join(admin_roles)})",
            )
        admins.append(Participant(name, organisation, Role(role_text)))
        admin.finish()

    top.finish()
    return Project(
        name=project_name,
        description=description,
        organisations=tuple(declared),
        server=server,
        sites=tuple(sites),
        admins=tuple(admins),
        ca_valid_days=ca_days,
        cert_valid_days=cert_days,
    )


def load_project(path: Path | str) -> Project:
    """Read and check ``project.toml`` at ``path``; raises :class:`ProjectFileError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProjectFileError(path, None, f"cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ProjectFileError(path, None, "is not UTF-8 text") from None
    return parse_project(text, path)


EXAMPLE_PROJECT = """\
# project.toml: who takes part in a flrt project.
# Run `flrt provision project.toml -o WORKSPACE` to create the project CA and one signed startup kit
# per participant. Add a site or an admin later and run it again: only the new kits are created.

[project]
name = "chest-xray-2027"             # letters, digits and . _ - @ +
description = "Pneumonia classifier, three hospitals"
# ca_valid_days = 3650               # lifetime of the project CA (default 10 years)
# cert_valid_days = 365              # lifetime of each participant's certificate (default 1 year)

# Every organisation that runs a node or has an admin.
[[organisations]]
name = "Lead Hospital"

[[organisations]]
name = "Hospital A"

[[organisations]]
name = "Hospital B"

# The server (the hub). List EVERY name and address sites and admins use to reach it: the public
# DNS name, the internal one, the IP address. They all go into its certificate, so a site that dials
# any of them verifies the server, and the kits try them in this order.
[server]
name = "server"                      # default "server"
organisation = "Lead Hospital"
hosts = ["fl.lead-hospital.example", "fl-internal.lead.lan", "10.20.0.5"]
port = 8443                          # sites (and admins, unless admin_port is set) dial this port
admin_port = 8444                    # optional: a separate port for the admin console

# Sites (the spokes): one kit each. They only ever dial out to the server.
[[sites]]
name = "hospital-a"
organisation = "Hospital A"

[[sites]]
name = "hospital-b"
organisation = "Hospital B"

# Admins: people who use `flrt admin`. The name is usually their e-mail address.
# Roles: project_admin (Lead IT: everything), org_admin (Site IT: their organisation's sites),
#        lead (Lead researcher: submit and operate jobs), member (Site researcher: view).
[[admins]]
name = "it-lead@lead-hospital.example"
organisation = "Lead Hospital"
role = "project_admin"

[[admins]]
name = "it@hospital-a.example"
organisation = "Hospital A"
role = "org_admin"

[[admins]]
name = "researcher@lead-hospital.example"
organisation = "Lead Hospital"
role = "lead"

[[admins]]
name = "researcher@hospital-b.example"
organisation = "Hospital B"
role = "member"
"""
