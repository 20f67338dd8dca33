"""The human-facing files of a startup kit: start script, README and default local policies."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from security.pki import Role

if TYPE_CHECKING:
    from security.kit import NodeConfig

__all__ = [
    "default_authorization",
    "default_privacy",
    "readme",
    "start_script",
    "toml_string",
]

_COMMAND = {Role.SERVER: "flrt server start", Role.SITE: "flrt site start"}


def toml_string(value: str) -> str:
    """A TOML basic string for ``value`` (JSON escapes plus DEL, which TOML also forbids raw)."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def start_script(config: NodeConfig) -> bytes:
    command = _COMMAND.get(config.role, "flrt admin")
    what = "admin console" if config.role.is_admin else config.role.value
    return f"""#!/bin/sh
# Start the flrt {what} "{config.name}" of project "{config.project}" from this kit.
# Written by `flrt provision`; part of the kit's signature, so edit ../local/ instead of this file.
# Usage: startup/start.sh [more flrt options]
set -eu
KIT="$(CDPATH= cd -- "$(dirname -- "$0")/.." && pwd)"
exec {command} "$KIT" "$@"
""".encode()


def readme(config: NodeConfig, ca_fingerprint: str, description: str) -> bytes:
    role = config.role
    if role is Role.SERVER:
        who = "the server of the project (Lead IT)"
        start = (
            f"Start it with `startup/start.sh`. It listens on port {config.port}"
            + (f" (sites) and {config.admin_port} (admins)" if config.admin_port else "")
            + ".\nOpen "
            + ("these ports" if config.admin_port else "this port")
            + " to the sites and admins; nothing else needs to be reachable."
        )
        trust = (
            "\ntrust/ holds the participant list and the revocation list (crl.pem). Lead IT updates\n"
            "them with `flrt provision` and `flrt provision revoke`; each carries its own CA\n"
            "signature, so copying a new version in place needs no new kit. Restart the server\n"
            "to load them.\n"
        )
    elif role is Role.SITE:
        who = f"site {config.name!r} of organisation {config.organisation!r} (Site IT)"
        start = (
            "Start it with `startup/start.sh`. The site only dials out to the server, on port\n"
            f"{config.port} of {', '.join(config.server_hosts)} (tried in this order);\n"
            "it needs no inbound firewall opening."
        )
        trust = ""
    else:
        who = f"admin {config.name!r} ({role.value}) of organisation {config.organisation!r}"
        start = (
            "Start the admin console with `startup/start.sh`. It dials the server on port\n"
            f"{config.connect_port} of {', '.join(config.server_hosts)}."
        )
        trust = ""
    local = (
        "local/ holds this site's own configuration, outside the signature: privacy.toml (the\n"
        "filters this site always applies; edit it as your institution requires), data.toml if\n"
        "you add one (where the data is), and authorization.toml, which is not read yet (admins'\n"
        "rights are fixed by their roles, see that file).\n"
        if role is not Role.SERVER and not role.is_admin
        else (
            "local/authorization.toml is not read yet: admins' rights are fixed by their roles\n"
            "(see that file).\n"
            if role is Role.SERVER
            else ""
        )
    )
    about = f"\n{description}\n" if description else ""
    text = f"""flrt startup kit: {config.name}
Project: {config.project}{about}
This kit is for {who}.

Check it first:

    flrt kit verify . --ca-fingerprint {ca_fingerprint}

Compare that fingerprint with the one Lead IT tells you over another channel (phone, in person).
`flrt kit verify` checks the CA signature over every file in startup/, the certificate chain and
its dates, and prints who this kit is for and when its certificate expires.

startup/ is signed by the project CA. Do not edit, add or remove anything there: the node refuses
to start from a kit whose signed part changed. startup/key.pem is this participant's private key:
keep it readable by the service account only (mode 0600) and never send it anywhere.
{local}{trust}
{start}
"""
    return text.encode()


def default_authorization(config: NodeConfig) -> bytes:
    scope = "this site" if config.role is Role.SITE else "the whole project"
    site_note = (
        "# A site receives no admin commands: it runs the tasks the server sends it, through the\n"
        "# filters of its own privacy.toml, and refuses jobs that lack its\n"
        "# required_job_filters. What leaves this site is set there, not here.\n#\n"
        if config.role is Role.SITE
        else ""
    )
    return f"""# Authorization policy for {scope}: "{config.name}" of project "{config.project}".
#
# NOT READ YET: flrt does not load this file; editing it changes nothing. Authorization policies
# are planned for a later release. Today the server decides every admin command by the fixed role
# in the admin's certificate:
#
#   project_admin  submit; view; abort and download any job
#   lead           submit; view; abort and download only the jobs it submitted
#   org_admin      view
#   member         view
#
# (view: the jobs, status, job and wait commands, over every job and site.) Sites and the server
# cannot use the admin console. Jobs never bring code: a job names a trainer already installed at
# the sites and the server.
#
{site_note}format = 1
""".encode()


def default_privacy(config: NodeConfig) -> bytes:
    return f"""# Privacy policy of site "{config.name}" of project "{config.project}".
# Outside the kit's signature: edit it as your institution requires. The filters listed here are
# applied first, to every task this site receives and every result it sends, whatever the job
# asks for. A wrong key or an unknown filter kind stops the site at start, naming the key.
format = 1

# Refuse jobs that do not declare at least these filters themselves (filter kinds, for example
# ["exclude_variables"]).
required_job_filters = []

# Filters this site always applies, in order. The one kind built today is "exclude_variables":
# the variables it names (names: exact names; patterns: regular expressions that must match a
# whole name) never leave this site, and the site keeps training its own values of them
# (restore_local = false resets them to the global model's instead). Differential privacy and
# homomorphic encryption filters are not built yet. Example:
#
# [[result_filters]]
# kind = "exclude_variables"
# names = ["classifier.bias"]
# patterns = ["bn[0-9]+[.].*"]
# restore_local = true
""".encode()
