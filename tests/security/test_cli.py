"""``flrt provision`` and ``flrt kit`` end to end through :func:`flrt.cli.main`."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import flrt.cli._kit_run as kit_cli
from flrt.cli import COMMANDS, main
from security.kit import load_kit
from security.project import parse_project

TINY = """\
[project]
name = "cli-project"

[[organisations]]
name = "Lead"

[[organisations]]
name = "Hospital A"

[server]
organisation = "Lead"
hosts = ["localhost"]
port = 8443

[[sites]]
name = "site-a"
organisation = "Hospital A"
"""


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_commands_are_registered() -> None:
    assert {"provision", "kit"} <= set(COMMANDS)


def test_example_is_a_valid_project(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["provision", "--example"], capsys)
    assert code == 0
    project = parse_project(out)
    assert len(project.admins) == 4
    assert tomllib.loads(out)["server"]["port"] == 8443


def test_provision_verify_revoke_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project.toml"
    project.write_text(TINY)
    ws = tmp_path / "ws"
    code, out, _ = _run(["provision", str(project), "-o", str(ws)], capsys)
    assert code == 0
    assert "created   site-a" in out
    assert "fingerprint" in out
    fingerprint = out.split("fingerprint: ")[1].split()[0]

    code, out, _ = _run(
        ["kit", "verify", str(ws / "kits" / "site-a"), "--ca-fingerprint", fingerprint], capsys
    )
    assert code == 0
    for text in ("site-a", "Hospital A", "site", "expires", "cli-project", "localhost:8443"):
        assert text in out
    kit = load_kit(ws / "kits" / "site-a")
    assert f"{kit.not_after:%Y-%m-%d}" in out

    code, out, _ = _run(
        ["provision", "revoke", "site-a", "-w", str(ws), "--reason", "key-compromise"], capsys
    )
    assert code == 0
    assert "site-a revoked" in out
    code, out, _ = _run(["provision", "list", "-w", str(ws)], capsys)
    assert code == 0
    assert "revoked" in out
    code, out, _ = _run(["kit", "verify", str(ws / "kits" / "server")], capsys)
    assert "2 participants, 1 revoked" in out

    # Re-running with one more site creates only that kit.
    project.write_text(TINY + '\n[[sites]]\nname = "site-b"\norganisation = "Hospital A"\n')
    code, out, err = _run(["provision", str(project), "-o", str(ws)], capsys)
    assert code == 0
    assert "created   site-b" in out
    assert "created   site-a" not in out
    assert "site-a is in the project file but its certificate was revoked" in err


def test_tampered_kit_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "project.toml"
    project.write_text(TINY)
    ws = tmp_path / "ws"
    assert main(["provision", str(project), "-o", str(ws)]) == 0
    capsys.readouterr()
    (ws / "kits" / "site-a" / "startup" / "node.toml").write_text("# mine now\n")
    code, _out, err = _run(["kit", "verify", str(ws / "kits" / "site-a")], capsys)
    assert code == 1
    assert err.count("\n") == 1
    assert "startup/node.toml was changed" in err


def test_seal_and_open(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project.toml"
    project.write_text(TINY)
    password = tmp_path / "password"
    password.write_text("correct horse battery\n")
    ws = tmp_path / "ws"
    code, out, _ = _run(
        ["provision", str(project), "-o", str(ws), "--seal", "--password-file", str(password)],
        capsys,
    )
    assert code == 0
    archive = ws / "sealed" / "site-a.flrtkit"
    assert archive.is_file()

    wrong = tmp_path / "wrong"
    wrong.write_text("incorrect horse\n")
    code, _, err = _run(
        ["kit", "open", str(archive), "-o", str(tmp_path / "kit"), "--password-file", str(wrong)],
        capsys,
    )
    assert code == 1
    assert "wrong password" in err
    assert not (tmp_path / "kit").exists()

    code, out, _ = _run(
        [
            "kit",
            "open",
            str(archive),
            "-o",
            str(tmp_path / "kit"),
            "--password-file",
            str(password),
        ],
        capsys,
    )
    assert code == 0
    assert "site-a" in out
    assert load_kit(tmp_path / "kit").identity.name == "site-a"

    code, out, _ = _run(
        [
            "kit",
            "seal",
            str(tmp_path / "kit"),
            "-o",
            str(tmp_path / "again.flrtkit"),
            "--password-file",
            str(password),
        ],
        capsys,
    )
    assert code == 0
    assert (tmp_path / "again.flrtkit").is_file()


def test_password_is_asked_twice_on_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project.toml"
    project.write_text(TINY)
    answers = iter(["correct horse battery", "correct horse batterY"])
    monkeypatch.setattr(kit_cli, "_interactive", lambda: True)
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    code, _, err = _run(["provision", str(project), "-o", str(tmp_path / "ws"), "--seal"], capsys)
    assert code == 1
    assert "the two passwords differ" in err
    assert not (tmp_path / "ws").exists()

    monkeypatch.setattr(kit_cli, "_interactive", lambda: False)
    code, _, err = _run(["provision", str(project), "-o", str(tmp_path / "ws"), "--seal"], capsys)
    assert code == 1
    assert "--password-file" in err


def test_project_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project.toml"
    project.write_text(TINY.replace("port = 8443", 'port = "https"'))
    code, _, err = _run(["provision", str(project), "-o", str(tmp_path / "ws")], capsys)
    assert code == 1
    assert err == f"flrt: error: {project}: server.port: expected an integer, got a string\n"
    code, _, err = _run(
        ["provision", str(tmp_path / "missing.toml"), "-o", str(tmp_path / "ws")], capsys
    )
    assert code == 1
    assert "missing.toml: cannot be read" in err
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["provision"],
        ["provision", "p.toml"],
        ["provision", "p.toml", "-o", "ws", "--password-file", "pw"],
        ["provision", "revoke", "-w", "ws"],
        ["provision", "revoke", "site-a"],
        ["provision", "--example", "-o", "ws"],
        ["kit"],
        ["kit", "open", "a.flrtkit"],
    ],
)
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


def test_password_is_never_a_command_line_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["kit", "open", "a.flrtkit", "-o", "x", "--password", "secret"])
    assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["provision", "p.toml", "-o", "ws", "--seal", "--password", "secret"])
    assert "unrecognized arguments" in capsys.readouterr().err
