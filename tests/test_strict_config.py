"""The agent's config and the client's inventory are read strictly: a value of the wrong
type, out of bounds or under an unknown key is a one-line error naming the key, never a
silently different (weaker) setting; plaintext only on loopback, however the config is made."""

from pathlib import Path

import pytest

from cloudvmi.errors import CloudVMIError
from cloudvmi.remote import config, inventory

TLS = 'ca = "ca.pem"\ncert = "n.pem"\nkey = "n.key"\n'
RULE = '[[allow]]\nidentity = "alice"\nvms = ["web-*"]\npermissions = ["read"]\n'


def agent(tmp_path: Path, body: str, rules: str = RULE) -> config.AgentConfig:
    path = tmp_path / "agent.toml"
    path.write_text(f'[agent]\nnode = "n1"\n{body}\n{rules}')
    return config.load(path)


def refused(tmp_path: Path, body: str, *words: str, rules: str = RULE) -> str:
    with pytest.raises(CloudVMIError) as info:
        agent(tmp_path, body, rules)
    message = str(info.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def test_a_good_config_keeps_its_types(tmp_path: Path) -> None:
    cfg = agent(tmp_path, TLS + 'listen = "10.0.0.2:7443"\nlab = false\nqmp_dirs = ["vms"]\n'
                'workers = 8\nmax_message_bytes = 16777216\naudit_redact_args = true\n'
                'metrics_listen = ":9464"\nrevoked = ["0A:1b", "0xff"]\n')
    assert cfg.lab is False and cfg.insecure is False and cfg.audit_redact_args is True
    assert cfg.workers == 8 and cfg.max_message_bytes == 16 << 20
    assert cfg.qmp_dirs == [(tmp_path / "vms").resolve()]
    assert cfg.revoked == {0x0A1B, 0xFF}
    assert cfg.rules[0].permissions == ["read"] and cfg.allowed("alice", "web-1", "read")


@pytest.mark.parametrize("value", ['"false"', '"no"', "0", "1", '["true"]'])
def test_a_boolean_must_be_a_toml_boolean(tmp_path: Path, value: str) -> None:
    # `bool("false")` is True: this used to turn plaintext on
    refused(tmp_path, f'listen = "0.0.0.0:7443"\ninsecure = {value}\n' + TLS,
            "insecure", "boolean")


@pytest.mark.parametrize("body,words", [
    ('workers = "16"', ("workers", "integer")),
    ("workers = 16.0", ("workers", "integer")),
    ("workers = true", ("workers", "integer")),
    ("workers = 0", ("workers", "from 1 to 1024")),
    ("max_concurrent_rpcs = -1", ("max_concurrent_rpcs",)),
    ("max_message_bytes = 1024", ("max_message_bytes",)),  # under the 4 MiB reply chunks
    ("max_message_bytes = 4294967296", ("max_message_bytes",)),
    ('qmp_dirs = "/run/vms"', ("qmp_dirs", "list of strings")),
    ("qmp_dirs = [1]", ("qmp_dirs", "list of strings")),
    ("lab = 1", ("lab", "boolean")),
    ('audit_log = ""', ("audit_log", "not empty")),
    ('metrics_listen = "9464"', ("metrics_listen", "HOST:PORT")),
    ('revoked = ["not-hex"]', ("revoked", "serial")),
    ('revoked = "abc"', ("revoked", "list of strings")),
])
def test_wrong_types_and_bounds_name_the_key(tmp_path: Path, body: str,
                                             words: tuple[str, ...]) -> None:
    refused(tmp_path, TLS + body, *words)


@pytest.mark.parametrize("body,key", [
    ("insecur = true", "insecur"),  # a typo of insecure
    ("audit_redact = true", "audit_redact"),
    ("allow = 1", "allow"),  # a key of the file in [agent]
])
def test_unknown_agent_keys_are_errors(tmp_path: Path, body: str, key: str) -> None:
    refused(tmp_path, TLS + body, repr(key), "unknown key")


@pytest.mark.parametrize("rule,words", [
    ('identity = "alice"\nvm = ["web-*"]\npermissions = ["read"]', ("'vm'", "unknown key")),
    ('identity = "alice"\npermission = ["read"]', ("'permission'", "unknown key")),
    ('identity = "alice"\npermissions = "read"', ("permissions", "list of strings")),
    ('identity = "alice"\npermissions = ["read", "admin"]', ("permissions", "from read")),
    ('identity = ["alice"]\npermissions = ["read"]', ("identity", "string")),
    ('permissions = ["read"]', ("identity", "required")),
])
def test_rules_are_checked(tmp_path: Path, rule: str, words: tuple[str, ...]) -> None:
    message = refused(tmp_path, TLS, *words, rules=f"[[allow]]\n{rule}\n")
    assert "[[allow]] #1" in message


def test_unknown_tables_are_errors(tmp_path: Path) -> None:
    refused(tmp_path, TLS, "'alow'", rules=RULE.replace("[[allow]]", "[[alow]]"))
    refused(tmp_path, TLS, "allow", "list of tables",
            rules='[allow]\nidentity = "a"\npermissions = ["read"]\n')
    path = tmp_path / "agent.toml"
    path.write_text('[agnet]\nnode = "n1"\n')
    with pytest.raises(CloudVMIError, match="unknown key 'agnet'"):
        config.load(path)
    path.write_text("[agent]\nnode = 7\n" + TLS)
    with pytest.raises(CloudVMIError, match=r"\[agent\]: node must be a string"):
        config.load(path)
    path.write_text(RULE)
    with pytest.raises(CloudVMIError, match="agent is required"):
        config.load(path)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.2:7443", "[::1]:7443",
                                    "localhost:7443"])
def test_insecure_on_loopback(tmp_path: Path, listen: str) -> None:
    cfg = agent(tmp_path, f'listen = "{listen}"\ninsecure = true\n')
    assert cfg.insecure is True


@pytest.mark.parametrize("listen", ["0.0.0.0:7443", "10.0.0.2:7443", "[::]:7443",
                                    "node2:7443", "127.1:7443", "127.0.0.1"])
def test_insecure_off_loopback_is_refused(tmp_path: Path, listen: str) -> None:
    refused(tmp_path, f'listen = "{listen}"\ninsecure = true\n', "insecure" if ":" in listen
            else "listen")
    with pytest.raises(CloudVMIError):  # a config made in code gets the same check
        config.AgentConfig(node="n1", listen=listen, insecure=True)


def test_tls_is_still_required(tmp_path: Path) -> None:
    refused(tmp_path, 'ca = "ca.pem"', "ca, cert and key are required")


# -- the client's inventory ------------------------------------------------------------------
def inv(tmp_path: Path, text: str) -> inventory.Inventory:
    path = tmp_path / "inventory.toml"
    path.write_text(text)
    return inventory.load(path)


CLIENT = '[client]\nca = "ca.pem"\ncert = "a.pem"\nkey = "a.key"\n'


def test_inventory_good(tmp_path: Path) -> None:
    got = inv(tmp_path, CLIENT + '[[node]]\nname = "n2"\naddress = "10.0.0.2:7443"\n'
              '[[node]]\nname = "dev"\naddress = "127.0.0.1:7443"\ninsecure = true\n')
    assert got.nodes["n2"].insecure is False and got.nodes["dev"].insecure is True
    assert got.tls.key == tmp_path / "a.key"


@pytest.mark.parametrize("text,words", [
    ('[[node]]\nname = "n"\naddress = "127.0.0.1:1"\ninsecure = "false"\n',
     ("insecure", "boolean")),
    ('[[node]]\nname = "n"\naddress = "127.0.0.1:1"\nserver = "x"\n', ("'server'",)),
    ('[[node]]\nname = "n"\n', ("address", "required")),
    ('[[node]]\nname = "n"\naddress = 7443\n', ("address", "string")),
    ('[[node]]\nname = "n"\naddress = "10.0.0.2:7443"\ninsecure = true\n',
     ("insecure", "loopback")),
    ('[[node]]\nname = "n"\naddress = "a:1"\n[[node]]\nname = "n"\naddress = "b:1"\n',
     ("twice",)),
    ('[client]\nca = "ca.pem"\ncert = "a.pem"\n', ("key", "required")),
    ('[client]\nca = "ca.pem"\ncert = "a.pem"\nkey = "a.key"\nkeys = "x"\n', ("'keys'",)),
    ('[[nodes]]\nname = "n"\naddress = "a:1"\n', ("'nodes'",)),
])
def test_inventory_is_strict(tmp_path: Path, text: str, words: tuple[str, ...]) -> None:
    with pytest.raises(CloudVMIError) as info:
        inv(tmp_path, text)
    assert "\n" not in str(info.value)
    for word in words:
        assert word in str(info.value)
