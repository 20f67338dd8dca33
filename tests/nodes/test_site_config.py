"""A site's own configuration: privacy policy and data locations, every wrong key named."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import anyio
import pytest

from flrt._admin_service import RIGHTS
from flrt._site_config import load_data_locations, load_policy
from flrt.errors import ConfigError
from flrt.filters import FILTERS
from flrt.site import SiteNode
from security.kit import load_kit


def test_the_provisioned_policy_is_read(kits: Path) -> None:
    policy = load_policy(kits / "site-1" / "local" / "privacy.toml")
    assert policy.result_filters == ()
    assert policy.required_job_filters == ()
    assert load_kit(kits / "site-1").identity.name == "site-1"


def test_the_provisioned_policys_examples_work_once_uncommented(kits: Path, tmp_path: Path) -> None:
    """The template used to show a differential_privacy filter, which does not exist: a site IT
    who uncommented it got a site that would not start."""
    text = (kits / "site-1" / "local" / "privacy.toml").read_text(encoding="utf-8")
    setting = re.compile(r"^# (\[\[result_filters\]\]|[a-z_]+ = .*)$")
    lines = [line[2:] if setting.match(line) else line for line in text.splitlines()]
    assert lines != text.splitlines()  # there is an example to uncomment
    path = tmp_path / "privacy.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    policy = load_policy(path)
    assert policy.result_filters
    assert [f.type for f in policy.result_filters] == ["exclude_variables"]
    assert len(policy.mandatory_filters()) == len(policy.result_filters)
    mentioned = set(re.findall(r'"([a-z]+(?:_[a-z]+)+)"', text))
    assert mentioned <= set(FILTERS), mentioned - set(FILTERS)


@pytest.mark.parametrize("kit", ["site-1", "server"])
def test_the_provisioned_authorization_file_says_it_is_not_read_and_what_roles_allow(
    kits: Path, kit: str
) -> None:
    """It used to lay out per-role rights (operate, custom_code...) and say that a site enforces
    its own policy for every command, when nothing reads the file and the roles are fixed."""
    text = (kits / kit / "local" / "authorization.toml").read_text(encoding="utf-8")
    assert "NOT READ YET" in text
    assert "enforce" not in text
    assert tomllib.loads(text) == {"format": 1}  # no rules that look as if they applied
    rows = dict(re.findall(r"^#   ([a-z_]+) {2,}(.+)$", text, flags=re.MULTILINE))
    assert set(rows) == {role.value for role in RIGHTS}
    for role, rights in RIGHTS.items():
        row = rows[role.value]
        assert ("submit" in row) == ("submit" in rights), role
        assert ("view" in row) == ("view" in rights), role
        assert ("abort" in row) == ("manage" in rights), role
        assert ("download" in row) == ("download" in rights), role
        own = "own_job" in {rights.get("manage"), rights.get("download")}
        assert ("only the jobs it submitted" in row) == own, role
        assert ("any job" in row) == (not own and "manage" in rights), role


def test_filters_by_kind_or_type(tmp_path: Path) -> None:
    path = tmp_path / "privacy.toml"
    path.write_text(
        'format = 1\nrequired_job_filters = ["exclude_variables"]\n'
        '[[result_filters]]\nkind = "exclude_variables"\nnames = ["a"]\n'
        '[[result_filters]]\ntype = "exclude_variables"\npatterns = ["b.*"]\n'
    )
    policy = load_policy(path)
    assert [f.type for f in policy.result_filters] == ["exclude_variables"] * 2
    assert len(policy.mandatory_filters()) == 2
    assert policy.missing_job_filters([]) == ["exclude_variables"]
    assert policy.missing_job_filters([{"type": "exclude_variables"}]) == []


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("format = 2\n", "format"),
        ("format = 1\nrules = []\n", "rules"),
        ('format = 1\nrequired_job_filters = "dp"\n', "required_job_filters"),
        ('format = 1\nrequired_job_filters = ["magic"]\n', "required_job_filters[0]"),
        ("format = 1\nresult_filters = 3\n", "result_filters"),
        ('format = 1\n[[result_filters]]\nkind = "magic"\n', "result_filters[0].kind"),
        ('format = 1\n[[result_filters]]\nkind = 3\nnames = ["a"]\n', "result_filters[0].kind"),
        ('format = 1\n[[result_filters]]\ntype = "magic"\n', "result_filters[0].type"),
        ('format = 1\n[[result_filters]]\nnames = ["a"]\n', "result_filters[0].kind"),
        ('format = 1\n[[result_filters]]\nkind = "exclude_variables"\n', "result_filters[0].names"),
        (
            'format = 1\n[[result_filters]]\nkind = "exclude_variables"\ntype = "x"\n',
            "result_filters[0].kind",
        ),
    ],
)
def test_a_wrong_policy_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "privacy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert caught.value.key == key
    assert caught.value.path == path


def test_an_unknown_filter_kind_is_reported_as_a_kind(tmp_path: Path) -> None:
    path = tmp_path / "privacy.toml"
    path.write_text('format = 1\n[[result_filters]]\nkind = "differential_privacy"\n')
    with pytest.raises(ConfigError, match="unknown filter kind 'differential_privacy'") as caught:
        load_policy(path)
    assert caught.value.key == "result_filters[0].kind"


def test_data_locations(tmp_path: Path) -> None:
    path = tmp_path / "data.toml"
    assert load_data_locations(path) == {}
    path.write_text('format = 1\n[data]\nwdbc = "wdbc.csv"\nimages = "/data/images"\n')
    assert load_data_locations(path) == {
        "wdbc": tmp_path / "wdbc.csv",
        "images": Path("/data/images"),
    }
    path.write_text("format = 1\n[data]\nwdbc = 3\n")
    with pytest.raises(ConfigError) as caught:
        load_data_locations(path)
    assert caught.value.key == "data.wdbc"
    path.write_text("format = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_data_locations(path)


def _not_a_file(tmp_path: Path, kind: str, name: str) -> Path:
    path = tmp_path / name
    if kind == "folder":
        path.mkdir()
        (path / "data.toml").write_text('format = 1\n[data]\nwdbc = "/data/wdbc.csv"\n')
    elif kind == "dangling link":
        path.symlink_to(tmp_path / "unmounted" / name)
    else:
        os.mkfifo(path)  # reading it would block the site's start for ever
    return path


NOT_A_FILE = {
    "folder": "is a folder, not a file",
    "dangling link": "is a link to nothing (its target does not exist)",
    "fifo": "is not a regular file",
}


@pytest.mark.parametrize("kind", sorted(NOT_A_FILE))
@pytest.mark.parametrize("name", ["data.toml", "privacy.toml"])
def test_a_local_file_that_is_not_a_regular_file_is_named(
    tmp_path: Path, kind: str, name: str
) -> None:
    """Before, both were read as absent: a site with no data locations (or no privacy policy)."""
    path = _not_a_file(tmp_path, kind, name)
    load = load_data_locations if name == "data.toml" else load_policy
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert caught.value.path == path
    assert str(caught.value) == f"{path}: {NOT_A_FILE[kind]}"


def _site_kit(kits: Path, tmp_path: Path) -> Path:
    kit = tmp_path / "kits" / "site-1"
    shutil.copytree(kits / "site-1", kit)  # local/ is the site's own: not signed
    return kit


@pytest.mark.anyio
async def test_a_site_whose_data_toml_is_a_folder_does_not_start(
    kits: Path, tmp_path: Path
) -> None:
    kit = _site_kit(kits, tmp_path)
    (kit / "local" / "data.toml").mkdir()
    with anyio.fail_after(30), pytest.raises(ConfigError) as caught:
        async with SiteNode(kit, tmp_path / "site", server=("127.0.0.1", 9)):
            pass
    assert str(caught.value) == f"{kit / 'local' / 'data.toml'}: is a folder, not a file"


def test_flrt_site_start_says_so_in_one_line(kits: Path, tmp_path: Path) -> None:
    kit = _site_kit(kits, tmp_path)
    (kit / "local" / "data.toml").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "flrt", "site", "start", str(kit), "--quiet"],
        capture_output=True,
        text=True,
        timeout=30,  # the code before this test ran the site for ever
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"flrt: error: {kit / 'local' / 'data.toml'}: is a folder, not a file"
    ]
