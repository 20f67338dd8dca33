"""A site's own configuration: privacy policy and data locations, every wrong key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from flrt._site_config import load_data_locations, load_policy
from flrt.errors import ConfigError
from security.kit import load_kit


def test_the_provisioned_policy_is_read(kits: Path) -> None:
    policy = load_policy(kits / "site-1" / "local" / "privacy.toml")
    assert policy.result_filters == ()
    assert policy.required_job_filters == ()
    assert load_kit(kits / "site-1").identity.name == "site-1"


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
        ('format = 1\n[[result_filters]]\nkind = "magic"\n', "result_filters[0].type"),
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
