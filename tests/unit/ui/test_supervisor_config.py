"""What ``ragchat up`` runs: child commands, environments, ports, order."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.config import ConfigError, Env
from ui.supervisor import GrpcHealth, HttpReady, SuiteConfig, SuitePorts, suite_specs


def test_specs_in_start_order_with_their_environment(tmp_path: Path) -> None:
    config = SuiteConfig(home=tmp_path, ports=SuitePorts.from_base(6000, ui=8000), ui_host="0.0.0.0")
    caller = {"PORT": "1", "DATA_DIR": "/elsewhere", "GENERATOR_BACKEND": "extractive", "PATH": "/bin"}
    specs = suite_specs(config, caller, python="/py")

    assert [s.name for s in specs] == ["retrieval", "generation", "ingest", "gateway", "ui"]
    assert [list(s.argv) for s in specs] == [
        ["/py", "-m", "services.retrieval"],
        ["/py", "-m", "services.generation"],
        ["/py", "-m", "services.ingest"],
        ["/py", "-m", "services.gateway"],
        ["/py", "-m", "ui.web"],
    ]
    ports = {"gateway": "6000", "ingest": "6001", "retrieval": "6002", "generation": "6003"}
    for spec in specs[:4]:
        assert spec.env["PORT"] == ports[spec.name]
        assert spec.env["HOST"] == "127.0.0.1"
        assert spec.env["DATA_DIR"] == str(tmp_path / spec.name)
        assert spec.ready == GrpcHealth(f"127.0.0.1:{ports[spec.name]}")
        assert spec.listen == ("127.0.0.1", int(ports[spec.name]))
    for spec in specs:
        assert spec.env["GATEWAY_ADDR"] == "127.0.0.1:6000"
        assert spec.env["INGEST_ADDR"] == "127.0.0.1:6001"
        assert spec.env["RETRIEVAL_ADDR"] == "127.0.0.1:6002"
        assert spec.env["GENERATION_ADDR"] == "127.0.0.1:6003"
        assert spec.env["RAGCHAT_HOME"] == str(tmp_path)
        assert spec.env["GENERATOR_BACKEND"] == "extractive", "the caller's settings pass through"
        assert spec.env["PATH"] == "/bin"
    ui = specs[-1]
    assert (ui.env["UI_HOST"], ui.env["UI_PORT"]) == ("0.0.0.0", "8000")
    assert ui.ready == HttpReady("127.0.0.1", 8000), "a wildcard bind is probed on loopback"


def test_no_ui(tmp_path: Path) -> None:
    specs = suite_specs(SuiteConfig(home=tmp_path, with_ui=False), {})
    assert [s.name for s in specs] == ["retrieval", "generation", "ingest", "gateway"]


def test_config_from_env_and_flags(tmp_path: Path) -> None:
    env = Env(
        {
            "RAGCHAT_HOME": str(tmp_path / "h"),
            "RAGCHAT_PORT_BASE": "7000",
            "RAGCHAT_UI_PORT": "7100",
            "SHUTDOWN_GRACE_SECONDS": "3",
            "RAGCHAT_MAX_RESTARTS": "2",
        }
    )
    config = SuiteConfig.from_env(env)
    assert config.home == (tmp_path / "h").resolve()
    assert config.ports == SuitePorts(gateway=7000, ingest=7001, retrieval=7002, generation=7003, ui=7100)
    assert config.grace_seconds == 8.0
    assert config.max_restarts == 2
    assert config.ui_url == "http://127.0.0.1:7100"

    flags = SuiteConfig.from_env(env, home=tmp_path / "f", ui_port=9000, port_base=9100, ui_host="0.0.0.0")
    assert flags.home == (tmp_path / "f").resolve()
    assert (flags.ports.gateway, flags.ports.ui, flags.ui_host) == (9100, 9000, "0.0.0.0")

    defaults = SuiteConfig.from_env(Env({}))
    assert defaults.ports == SuitePorts()
    assert defaults.home == Path(".ragchat").resolve()


def test_bad_port_settings_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="RAGCHAT_PORT_BASE"):
        SuiteConfig.from_env(Env({"RAGCHAT_PORT_BASE": "70000"}))
    with pytest.raises(ConfigError, match="--ui-port"):
        SuiteConfig.from_env(Env({}), ui_port=0)


def test_free_ports_are_distinct() -> None:
    ports = SuitePorts.free()
    values = [ports.of(name) for name in ("gateway", "ingest", "retrieval", "generation", "ui")]
    assert len(set(values)) == 5
    assert all(v > 0 for v in values)


def test_error_log_lines_become_one_short_console_line() -> None:
    from ui.supervisor import _error_summary

    line = '{"level": "error", "msg": "unhandled error in /X", "exc": "Traceback\\n  ...\\nRuntimeError: boom"}'
    assert _error_summary(line) == "error: unhandled error in /X (RuntimeError: boom)"
    assert _error_summary('{"level": "info", "msg": "serving"}') is None
    assert _error_summary("Traceback (most recent call last):") is None
    long = _error_summary('{"level": "critical", "msg": "' + "x" * 500 + '"}')
    assert long is not None and len(long) == len("critical: ") + 200
