"""Inventory parsing: Ansible's YAML format read as-is, and every refusal pinned to its line."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from orchestrator.core.patterns import PatternError
from orchestrator.inventory.reader import (
    Inventory,
    InventoryError,
    InventoryHost,
    load_inventory,
    parse_inventory,
)

REPO = Path(__file__).resolve().parents[3]
BAD = Path(__file__).resolve().parents[1] / "data" / "inventories"


def parse(text: str, **kwargs: object) -> Inventory:
    return parse_inventory(textwrap.dedent(text), "inv.yml", **kwargs)  # type: ignore[arg-type]


def host(text: str, name: str) -> InventoryHost:
    return parse(text).hosts[name]


# -- the example -----------------------------------------------------------------------------


def test_example_inventory_parses() -> None:
    inv = load_inventory(REPO / "inventory" / "example.yml")
    assert list(inv.hosts) == ["pi5-a", "pi5-b", "pi4-lab"]
    assert inv.groups["roastery"] == {"pi5-a", "pi5-b", "pi4-lab"}
    assert inv.groups["roaster_line_1"] == {"pi5-a", "pi5-b"}
    assert inv.groups["lab"] == {"pi4-lab"}
    assert inv.groups["all"] == set(inv.hosts)

    a, b, lab = inv.hosts["pi5-a"], inv.hosts["pi5-b"], inv.hosts["pi4-lab"]
    assert a.groups == ("roaster_line_1", "roastery")
    assert a.labels["cooler"] == "active" and b.labels["cooler"] == "none"  # host beats group
    assert b.labels["psu"] == "generic-15w" and a.labels["psu"] == "official-27w"
    assert a.labels["location"] == "roaster-line-1"  # child group beats parent
    assert lab.labels["location"] == "lab-bench"
    assert lab.labels["site"] == "lisbon" and lab.labels["owner"] == "ml-team"
    assert lab.port == 2222 and a.port == 22
    assert lab.python == "/usr/bin/python3.11" and a.python == "python3"
    assert a.env == {"OMP_WAIT_POLICY": "PASSIVE", "ORT_LOG_LEVEL": "3"}
    assert lab.env == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert a.user == "pi" and a.address == "192.168.40.11"
    assert a.key_file == str(Path.home() / ".ssh" / "edgefleet_ed25519")
    assert a.source == f"{REPO / 'inventory' / 'example.yml'}:41"
    assert [h.name for h in inv.select("roastery:&pi5*:!pi5-b")] == ["pi5-a"]
    for h in inv.hosts.values():
        json.dumps(h.labels)


# -- structure -------------------------------------------------------------------------------


def test_defaults_for_a_bare_host() -> None:
    inv = parse("all:\n  hosts:\n    pi5-a:\n")
    assert inv.hosts["pi5-a"] == InventoryHost(
        name="pi5-a", address="pi5-a", port=22, user=None, key_file=None, connection="ssh",
        root="~/.edgefleet", python="python3", env={}, labels={}, groups=("ungrouped",),
        source="inv.yml:3",
    )
    assert inv.groups == {"all": {"pi5-a"}, "ungrouped": {"pi5-a"}}
    assert inv.path == Path("inv.yml")


def test_nested_children_three_deep_inherit_and_collect_hosts() -> None:
    inv = parse("""\
        all:
          vars: {level: all, from_all: 1}
          children:
            site:
              vars: {level: site, from_site: 1}
              hosts: {gateway: }
              children:
                building:
                  vars: {level: building}
                  children:
                    room:
                      vars: {level: room}
                      hosts:
                        pi-room:
                    other_room:
                  hosts:
                    pi-building: {level: host}
        """)
    room = inv.hosts["pi-room"]
    assert room.groups == ("building", "room", "site")
    assert room.labels == {"level": "room", "from_all": 1, "from_site": 1}
    assert inv.hosts["pi-building"].labels["level"] == "host"
    assert inv.hosts["gateway"].labels["level"] == "site"
    assert inv.groups["site"] == {"gateway", "pi-room", "pi-building"}
    assert inv.groups["building"] == {"pi-room", "pi-building"}
    assert inv.groups["other_room"] == frozenset()  # declared with a null value: kept, empty
    assert list(inv.hosts) == ["gateway", "pi-room", "pi-building"]  # declaration order


def test_top_level_groups_beside_all_are_children_of_all() -> None:
    inv = parse("""\
        all:
          vars: {owner: ml-team}
        lab:
          hosts: {pi4-lab: }
        """)
    assert inv.hosts["pi4-lab"].labels == {"owner": "ml-team"}
    assert inv.hosts["pi4-lab"].groups == ("lab",)
    assert inv.groups["all"] == {"pi4-lab"}


def test_precedence_host_over_child_over_parent_over_all() -> None:
    inv = parse("""\
        all:
          vars: {a: all, b: all, c: all, d: all}
          children:
            parent:
              vars: {b: parent, c: parent, d: parent}
              children:
                child:
                  vars: {c: child, d: child}
                  hosts:
                    pi: {d: host}
        """)
    assert inv.hosts["pi"].labels == {"a": "all", "b": "parent", "c": "child", "d": "host"}


def test_equal_depth_later_name_wins_whatever_the_file_order() -> None:
    text = """\
        all:
          children:
            {first}:
              vars: {{cooler: from-{first}}}
              hosts: {{pi: }}
            {second}:
              vars: {{cooler: from-{second}}}
              hosts: {{pi: }}
        """
    for first, second in (("alpha", "beta"), ("beta", "alpha")):
        pi = host(text.format(first=first, second=second), "pi")
        assert pi.labels["cooler"] == "from-beta"
        assert pi.groups == ("alpha", "beta")


def test_deeper_group_wins_over_later_name_and_depth_is_the_longest_path() -> None:
    # "zz" sits at depth 1; "aa" at depth 2 (under "mid") although all also lists it at depth 1.
    inv = parse("""\
        all:
          children:
            zz:
              vars: {x: zz}
              hosts: {pi: }
            aa:
              vars: {x: aa}
            mid:
              children:
                aa:
                  hosts: {pi: }
        """)
    assert inv.hosts["pi"].labels["x"] == "aa"
    assert inv.hosts["pi"].groups == ("aa", "mid", "zz")


def test_group_priority_reorders_equal_depth_groups() -> None:
    pi = host("""\
        all:
          children:
            alpha:
              vars: {cooler: alpha, ansible_group_priority: 10}
              hosts: {pi: }
            beta:
              vars: {cooler: beta}
              hosts: {pi: }
        """, "pi")
    assert pi.labels == {"cooler": "alpha"}  # priority is not a label


def test_host_in_two_groups_merges_host_vars_and_keeps_first_source() -> None:
    inv = parse("""\
        all:
          children:
            roaster_line_1:
              hosts:
                pi5-a: {mic: front, cooler: none}
            benchmarks:
              hosts:
                pi5-a: {cooler: active}
                pi5-b:
        """)
    a = inv.hosts["pi5-a"]
    assert a.groups == ("benchmarks", "roaster_line_1")
    assert a.labels == {"mic": "front", "cooler": "active"}  # later declaration wins
    assert a.source == "inv.yml:5"
    assert list(inv.hosts) == ["pi5-a", "pi5-b"]


def test_group_defined_in_two_places_adds_up() -> None:
    inv = parse("""\
        all:
          children:
            roastery:
              children:
                lab:
            lab:
              vars: {board: rpi4}
              hosts: {pi4-lab: }
        """)
    assert inv.hosts["pi4-lab"].groups == ("lab", "roastery")
    assert inv.hosts["pi4-lab"].labels == {"board": "rpi4"}
    assert inv.groups["roastery"] == {"pi4-lab"}


def test_ungrouped_holds_hosts_only_in_all() -> None:
    inv = parse("""\
        all:
          hosts: {loner: , pi5-a: }
          children:
            lab: {hosts: {pi5-a: }}
        """)
    assert inv.hosts["loner"].groups == ("ungrouped",)
    assert inv.hosts["pi5-a"].groups == ("lab",)
    assert inv.groups["ungrouped"] == {"loner"}


def test_merge_keys_and_anchors_work() -> None:
    inv = parse("""\
        all:
          hosts:
            pi5-a: &pi5 {board: rpi5, cooler: active}
            pi5-b:
              <<: *pi5
              cooler: none
        """)
    assert inv.hosts["pi5-a"].labels == {"board": "rpi5", "cooler": "active"}
    assert inv.hosts["pi5-b"].labels == {"board": "rpi5", "cooler": "none"}


def test_host_ranges_expand() -> None:
    inv = parse("""\
        all:
          hosts:
            pi[08:10]: {board: rpi5}
            cam-[a:c]:
            x[1:5:2]-[a:b]:
        """)
    assert list(inv.hosts) == [
        "pi08", "pi09", "pi10", "cam-a", "cam-b", "cam-c",
        "x1-a", "x1-b", "x3-a", "x3-b", "x5-a", "x5-b",
    ]
    assert inv.hosts["pi10"].labels == {"board": "rpi5"}
    assert inv.hosts["pi10"].source == "inv.yml:3"


def test_a_host_range_with_a_trailing_newline_is_not_expanded() -> None:
    """Ranges are matched with fullmatch: with ``match`` and ``$``, "pi[1:3]\\n" quietly
    became pi1..pi3; now it is a host name, refused as one."""
    with pytest.raises(InventoryError, match="is not allowed"):
        parse("""\
            all:
              hosts:
                "pi[1:3]\\n": {}
            """)


# -- variables -------------------------------------------------------------------------------


def test_connection_variables() -> None:
    pi = host("""\
        all:
          hosts:
            pi5-a:
              ansible_host: 192.168.40.11
              ansible_port: "2222"
              ansible_user: pi
              ansible_connection: local
              edgefleet_root: /srv/edge fleet/it's "here"
              edgefleet_python: /usr/bin/python3.11
        """, "pi5-a")
    assert (pi.address, pi.port, pi.user, pi.connection) == ("192.168.40.11", 2222, "pi", "local")
    assert pi.root == "/srv/edge fleet/it's \"here\""  # kept literally
    assert pi.python == "/usr/bin/python3.11"
    assert pi.labels == {}


def test_legacy_ssh_variable_names_are_understood() -> None:
    pi = host("""\
        all:
          vars: {ansible_host: wrong, ansible_user: wrong}
          hosts:
            pi: {ansible_ssh_host: 10.0.0.7, ansible_ssh_port: 2200, ansible_ssh_user: pi,
                 ansible_private_key_file: /keys/pi}
        """, "pi")
    assert (pi.address, pi.port, pi.user, pi.key_file) == ("10.0.0.7", 2200, "pi", "/keys/pi")
    assert pi.labels == {}


def test_null_connection_variable_means_default() -> None:
    pi = host("""\
        all:
          vars: {ansible_user: pi, ansible_port: 2222}
          hosts:
            pi: {ansible_user: , ansible_port: ~}
        """, "pi")
    assert pi.user is None and pi.port == 22


def test_env_values_become_the_text_as_written() -> None:
    pi = host("""\
        all:
          hosts:
            pi:
              edgefleet_env:
                THREADS: 4
                FLAG: yes
                RATIO: 1.10
                MODE: 0755
                EMPTY:
                QUOTED: "true"
                EDGEFLEET_SYSFS: /tmp/fake sys
        """, "pi")
    assert pi.env == {
        "THREADS": "4", "FLAG": "yes", "RATIO": "1.10", "MODE": "0755", "EMPTY": "",
        "QUOTED": "true", "EDGEFLEET_SYSFS": "/tmp/fake sys",
    }
    assert all(isinstance(v, str) for v in pi.env.values())


def test_env_is_replaced_not_merged_like_ansible() -> None:
    inv = parse("""\
        all:
          vars:
            edgefleet_env: {A: "1", B: "2"}
          hosts:
            inherits:
            replaces: {edgefleet_env: {C: "3"}}
            clears: {edgefleet_env: {}}
        """)
    assert inv.hosts["inherits"].env == {"A": "1", "B": "2"}
    assert inv.hosts["replaces"].env == {"C": "3"}
    assert inv.hosts["clears"].env == {}


def test_labels_keep_every_other_variable_as_json() -> None:
    pi = host("""\
        all:
          hosts:
            pi:
              location: roastery
              line: 1
              watts: 27.5
              fan: true
              mics: [front, rear]
              psu: {model: official, watts: 27}
              installed: 2024-05-01
              limit: .inf
              nothing:
              ansible_python_interpreter: /usr/bin/python3
        """, "pi")
    assert pi.labels == {
        "ansible_python_interpreter": "/usr/bin/python3",
        "fan": True,
        "installed": "2024-05-01",
        "limit": ".inf",
        "line": 1,
        "location": "roastery",
        "mics": ["front", "rear"],
        "nothing": None,
        "psu": {"model": "official", "watts": 27},
        "watts": 27.5,
    }
    assert list(pi.labels) == sorted(pi.labels)
    assert json.loads(json.dumps(pi.labels, allow_nan=False)) == pi.labels


def test_secrets_never_become_labels() -> None:
    pi = host("""\
        all:
          vars:
            ansible_become_pass: hunter2
          hosts:
            pi:
              ansible_password: hunter2
              api_token: !vault |
                $ANSIBLE_VAULT;1.1;AES256
                6162
              nested: {ok: 1, key: !vault "$ANSIBLE_VAULT;1.1;AES256"}
              room: lab
              ansible_paramiko_pass: hunter2
              ansible_paramiko_password: hunter2
              grafana_token: hunter2
              db_passwd: hunter2
              webhook_secret: hunter2
              bypass_cache: yes
              mqtt: {host: broker, password: hunter2}
              cameras: [{name: door, api_key: hunter2}]
              power: {passes: 3}
        """, "pi")
    # A secret's name nested in a label withholds the whole label, as a top-level one does
    # (before, mqtt.password was stored and shown to viewers on the device page and API).
    assert pi.labels == {"room": "lab", "bypass_cache": True, "power": {"passes": 3}}


def test_unsafe_tag_is_plain_text() -> None:
    assert host("all:\n  hosts:\n    pi: {note: !unsafe '{{ x }}'}\n", "pi").labels == {
        "note": "{{ x }}"
    }


def test_key_file_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    inv_dir = tmp_path / "fleet"
    inv_dir.mkdir()
    path = inv_dir / "hosts.yml"
    path.write_text(textwrap.dedent("""\
        all:
          hosts:
            rel: {ansible_ssh_private_key_file: keys/pi_ed25519}
            up: {ansible_ssh_private_key_file: ../keys/pi}
            home: {ansible_ssh_private_key_file: ~/.ssh/id_ed25519}
            abs: {ansible_ssh_private_key_file: /etc/edgefleet/key}
        """))
    hosts = load_inventory(path).hosts
    assert hosts["rel"].key_file == str(inv_dir / "keys" / "pi_ed25519")
    assert hosts["up"].key_file == str(tmp_path / "keys" / "pi")
    assert hosts["home"].key_file == str(tmp_path / "home" / ".ssh" / "id_ed25519")
    assert hosts["abs"].key_file == "/etc/edgefleet/key"

    monkeypatch.chdir(tmp_path)
    text = "all: {hosts: {pi: {ansible_ssh_private_key_file: k}}}"
    assert parse_inventory(text).hosts["pi"].key_file == str(tmp_path / "k")
    assert parse_inventory(text, base_dir=inv_dir).hosts["pi"].key_file == str(inv_dir / "k")


def test_select_uses_patterns_and_knows_empty_groups() -> None:
    inv = parse("""\
        all:
          children:
            lab: {hosts: {pi4-lab: }}
            spare:
        """)
    assert [h.name for h in inv.select("lab")] == ["pi4-lab"]
    with pytest.raises(PatternError, match="matched no devices"):
        inv.select("spare")
    with pytest.raises(PatternError, match="'labs' is neither a host nor a group"):
        inv.select("labs")


def test_big_inventory_is_fast() -> None:
    text = "all:\n  children:\n" + "".join(
        f"    g{g}:\n      vars: {{n: {g}}}\n      hosts:\n        pi{g}-[000:199]:\n"
        for g in range(10)
    )
    inv = parse_inventory(text)
    assert len(inv.hosts) == 2000
    assert inv.hosts["pi9-199"].labels == {"n": 9}


# -- refusals --------------------------------------------------------------------------------

BAD_FILES = [
    ("syntax_error.yml", 5, "invalid YAML: did not find expected ',' or '}' "
                            "(while parsing a flow mapping that starts at line 4)"),
    ("tab_indent.yml", 4, "invalid YAML"),
    ("duplicate_host.yml", 9, "duplicate key 'pi5-a' (first written at line 6)"),
    ("duplicate_var.yml", 6, "duplicate key 'location' (first written at line 5)"),
    ("unknown_connection.yml", 6,
     "'winrm' is not supported; use one of: ssh, openssh, paramiko, local"),
    ("bad_port.yml", 6, "ansible_port must be a whole number from 1 to 65535, not '70000'"),
    ("port_not_a_number.yml", 4, "not 'ssh'"),
    ("env_not_mapping.yml", 6, "edgefleet_env must be a mapping of NAME: value"),
    ("env_bad_name.yml", 7, "'BAD-NAME' is not a valid environment variable name"),
    ("env_shell_name.yml", 7, "'OPTIND' is one the device's shell keeps for itself"),
    ("unknown_section.yml", 7, "unknown key 'host' in group 'lab'"),
    ("host_without_hosts_key.yml", 5, "put hosts under 'hosts:'"),
    ("cycle.yml", 13, "group 'roastery' would be its own ancestor "
                      "(roastery -> lab -> roaster_line_1 -> roastery)"),
    ("self_child.yml", 8, "group 'lab' would be its own ancestor"),
    ("hostile_host.yml", 5, "host name '-oProxyCommand=touch /tmp/pwned' is not allowed"),
    ("host_with_port.yml", 4, "set ansible_host (and ansible_port)"),
    ("hostile_group.yml", 6, "group name 'line 1.a' is not allowed"),
    ("empty.yml", None, "inventory defines no hosts"),
    ("no_hosts.yml", None, "inventory defines no hosts"),
    ("host_address_as_value.yml", 6, "write 'pi5-b: {ansible_host: ADDRESS}'"),
    ("hosts_as_list.yml", 6, "hosts of group 'lab' must be a mapping, not a list"),
    ("top_level_hosts.yml", 2, "indent it under 'all:'"),
    ("ini_format.ini", 3, "looks like an INI inventory"),
    ("all_as_child.yml", 8, "'all' is the root group"),
    ("bad_var_name.yml", 5, "variable name 'cooler type' is not valid"),
    ("vault_address.yml", 5, "ansible_host is vault-encrypted"),
    ("option_address.yml", 5, "'-oProxyCommand=evil' is not a host name or IP address"),
    ("bad_range.yml", 4, "'[1-3]' is not a host range"),
    ("group_not_mapping.yml", 4, "group 'lab' must be a mapping of hosts:, vars: and children:"),
]


@pytest.mark.parametrize(("name", "line", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_inventory_files(name: str, line: int | None, message: str) -> None:
    path = BAD / name
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    error = caught.value
    assert (error.file, error.line) == (str(path), line)
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(error).startswith(prefix), str(error)
    assert message in str(error)


def test_every_recorded_bad_file_is_tested() -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted(b[0] for b in BAD_FILES)


def test_hostile_host_error_says_what_is_allowed_and_suggests_ansible_host() -> None:
    with pytest.raises(InventoryError) as caught:
        load_inventory(BAD / "hostile_host.yml")
    assert "[A-Za-z0-9_][A-Za-z0-9._-]*" in str(caught.value)
    assert "ansible_host" in str(caught.value)


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ("pi5-a: {ansible_port: true}", "not 'true'"),
        ("pi5-a: {ansible_port: 0}", "not '0'"),
        ("pi5-a: {ansible_port: 22.5}", "not '22.5'"),
        ("pi5-a: {ansible_port: [22]}", "must be a single value, not a list"),
        ("pi5-a: {ansible_connection: smart}", "ssh picks OpenSSH or paramiko"),
        ("pi5-a: {ansible_connection: winrm}", "use one of: ssh, openssh, paramiko, local"),
        ("pi5-a: {edgefleet_env: [A=1]}", "edgefleet_env must be a mapping"),
        ("pi5-a: {edgefleet_env: {A: [1]}}", "edgefleet_env.A must be a single value"),
        ("pi5-a: {edgefleet_env: {A: \"x\\0y\"}}", "NUL byte"),
        ("pi5-a: {ansible_user: '-oops'}", "not a valid user name"),
        ("pi5-a: {edgefleet_root: ''}", "edgefleet_root is empty"),
        ("pi5-a: {tag: !!python/name:os.system }", "unsupported YAML tag"),
        ("x" * 65 + ":", "at most 64 characters"),
        ("pi[1:9999]:", "must expand to 1..4096 hosts"),
        ("pi[1:4096]-[1:4096]:", "must expand to 1..4096 hosts"),
        ("pi[9:1]:", "must expand to 1..4096 hosts"),
        ("pi[a:Z]:", "a letter to a letter of the same case"),
        ("pi[01:100]:", "equal lengths"),
        ("pi[a:3]:", "a number to a number"),
        ("? [a, b]\n    : 1", "a key must be a plain name"),
    ],
)
def test_bad_host_entries(snippet: str, message: str) -> None:
    text = "all:\n  hosts:\n    " + snippet + "\n"
    with pytest.raises(InventoryError, match="^inv.yml:3: ") as caught:
        parse_inventory(text, "inv.yml")
    assert message in str(caught.value)


def test_bad_value_in_group_vars_is_caught_even_when_overridden() -> None:
    text = """\
        all:
          vars:
            ansible_port: 99999
          hosts:
            pi: {ansible_port: 22}
        """
    with pytest.raises(InventoryError, match="^inv.yml:3: ansible_port"):
        parse(text)


def test_recursive_alias_and_bad_group_priority() -> None:
    with pytest.raises(InventoryError, match="^inv.yml:3: value contains itself"):
        parse("all:\n  hosts:\n    pi: {loop: &x [*x]}\n")
    with pytest.raises(InventoryError, match="^inv.yml:3: ansible_group_priority must be"):
        parse("lab:\n  vars:\n    ansible_group_priority: high\n  hosts: {pi: }\n")


def test_root_must_be_a_mapping() -> None:
    with pytest.raises(InventoryError, match="^inv.yml:1: an inventory must be a YAML mapping"):
        parse("- pi5-a\n- pi5-b\n")


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(InventoryError, match=f"^{missing}: cannot read inventory"):
        load_inventory(missing)
    latin1 = tmp_path / "latin1.yml"
    latin1.write_bytes(b"all:\n  hosts:\n    caf\xe9:\n")
    with pytest.raises(InventoryError, match=f"^{latin1}:3: not UTF-8"):
        load_inventory(latin1)
    control = tmp_path / "control.yml"
    control.write_text("all:\n  hosts:\n    pi\x01:\n")
    with pytest.raises(InventoryError, match=f"^{control}:3: invalid YAML"):
        load_inventory(control)
    bom = tmp_path / "bom.yml"
    bom.write_bytes("\ufeffall:\n  hosts:\n    pi:\n".encode())
    assert list(load_inventory(bom).hosts) == ["pi"]
