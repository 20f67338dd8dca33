"""``project.toml``: the example parses, and every kind of mistake names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from security.errors import ProjectFileError
from security.pki import ADMIN_ROLES, Role
from security.project import EXAMPLE_PROJECT, load_project, parse_project
from tests.security.conftest import SMALL_PROJECT


def test_example_parses_with_every_role() -> None:
    project = parse_project(EXAMPLE_PROJECT)
    assert project.name == "chest-xray-2027"
    assert project.server.hosts == ("fl.lead-hospital.example", "fl-internal.lead.lan", "10.20.0.5")
    assert (project.server.port, project.server.admin_port) == (8443, 8444)
    assert {p.role for p in project.participants} == {Role.SERVER, Role.SITE} | ADMIN_ROLES
    assert len({s.organisation for s in project.sites}) == 2
    assert project.participants[0].role is Role.SERVER


def test_defaults() -> None:
    project = parse_project(SMALL_PROJECT)
    assert project.server.name == "server"
    assert (project.ca_valid_days, project.cert_valid_days) == (3650, 365)
    assert [p.name for p in project.sites] == ["site-a", "site-b"]


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "project.toml"
    with pytest.raises(ProjectFileError, match="cannot be read") as exc:
        load_project(path)
    assert exc.value.path == path
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ProjectFileError, match="UTF-8"):
        load_project(path)
    path.write_text(SMALL_PROJECT)
    assert load_project(path).name == "test-project"


def _edit(old: str, new: str) -> str:
    assert old in SMALL_PROJECT, old
    return SMALL_PROJECT.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[project\n", None, "not valid TOML"),
        (_edit('name = "test-project"\n', ""), "project.name", "is missing"),
        (_edit('name = "test-project"', 'name = "a b"'), "project.name", "not a valid name"),
        (
            _edit('name = "test-project"', "name = 7"),
            "project.name",
            "expected a string, got an integer",
        ),
        (
            _edit('name = "test-project"', 'name = "p"\nowner = "me"'),
            "project.owner",
            "unknown key",
        ),
        (_edit("[project]", 'colour = "red"\n[project]'), "colour", "unknown key"),
        (
            _edit("[project]", "[project]\nca_valid_days = 10\ncert_valid_days = 20"),
            "project.cert_valid_days",
            "longer than the CA",
        ),
        (
            _edit("[project]", "[project]\ncert_valid_days = true"),
            "project.cert_valid_days",
            "expected an integer, got a boolean",
        ),
        (
            _edit("[project]", "[project]\ncert_valid_days = 0"),
            "project.cert_valid_days",
            "from 1 to 36500",
        ),
        (
            _edit('hosts = ["fl.example.org", "localhost", "127.0.0.1"]', "hosts = []"),
            "server.hosts",
            "at least one host",
        ),
        (_edit('"localhost"', '"bad host"'), "server.hosts[1]", "not a host name"),
        (_edit('"localhost"', "3"), "server.hosts[1]", "expected a host name"),
        (_edit('"localhost"', '"FL.example.org"'), "server.hosts[1]", "listed twice"),
        (_edit("port = 8443", "port = 70000"), "server.port", "from 1 to 65535"),
        (_edit("port = 8443", 'port = "8443"'), "server.port", "expected an integer, got a string"),
        (_edit("port = 8443\n", ""), "server.port", "is missing"),
        (_edit("admin_port = 8444", "admin_port = 8443"), "server.admin_port", "must differ"),
        (_edit("admin_port = 8444", "admin_port = 8444\ntls = 1"), "server.tls", "unknown key"),
        (
            _edit('[server]\norganisation = "Lead Hospital"', '[server]\norganisation = "Nowhere"'),
            "server.organisation",
            "not declared",
        ),
        (
            _edit(
                'name = "site-b"\norganisation = "Hospital B"',
                'name = "site-b"\norganisation = "Hospital C"',
            ),
            "sites[1].organisation",
            "'Hospital C' is not declared",
        ),
        (_edit('name = "site-b"', 'name = "SITE-A"'), "sites[1].name", "already used by sites[0]"),
        (_edit('name = "site-b"', 'name = "server"'), "sites[1].name", "already used by server"),
        (_edit('name = "site-b"', 'name = "../etc"'), "sites[1].name", "not a valid name"),
        (_edit('name = "site-b"', 'name = "site-b"\nport = 1'), "sites[1].port", "unknown key"),
        (_edit('role = "lead"', 'role = "site"'), "admins[2].role", "not an admin role"),
        (
            _edit('role = "lead"', 'role = "wizard"'),
            "admins[2].role",
            "expected one of: lead, member, org_admin, project_admin",
        ),
        (_edit('role = "lead"\n', ""), "admins[2].role", "is missing"),
        (
            _edit(
                '[[organisations]]\nname = "Hospital B"\n',
                '[[organisations]]\nname = "Hospital A"\n',
            ),
            "organisations[2].name",
            "already declared",
        ),
        (
            "sites = 3\n" + SMALL_PROJECT.replace("[[sites]]", "[[sitez]]"),
            "sites",
            "expected an array",
        ),
        (SMALL_PROJECT.replace("[[sites]]", "[[sitez]]"), "sitez", "unknown key"),
        (_edit("[server]", "[server_]"), "server", "is missing"),
    ],
)
def test_mistakes_name_file_and_key(text: str, key: str | None, reason: str) -> None:
    with pytest.raises(ProjectFileError) as exc:
        parse_project(text, "conf/project.toml")
    error = exc.value
    assert error.path == Path("conf/project.toml")
    assert error.key == key
    assert reason in error.reason
    assert str(error).startswith("conf/project.toml")
    assert isinstance(error, ValueError)


def test_no_organisations() -> None:
    text = "\n".join(line for line in SMALL_PROJECT.splitlines() if "organisations" not in line)
    with pytest.raises(ProjectFileError):
        parse_project(text)


def test_ip_hosts_are_normalised() -> None:
    project = parse_project(_edit('"127.0.0.1"', '"::0001"'))
    assert project.server.hosts[-1] == "::1"
