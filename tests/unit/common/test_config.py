from pathlib import Path

import pytest

from services.common.aws import AwsConfig, make_client
from services.common.config import ConfigError, Env, ServerConfig, data_dir


def test_defaults_and_parsing() -> None:
    config = ServerConfig.from_env(Env({"PORT": "6000", "SHUTDOWN_GRACE_SECONDS": "2.5"}), 50051)
    assert config.port == 6000
    assert config.grace_seconds == 2.5
    assert config.host == "127.0.0.1"
    assert ServerConfig.from_env(Env({}), 50051).port == 50051


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PORT": "http"}, "PORT='http' is not a valid int"),
        ({"PORT": "70000"}, "PORT='70000' must be at most 65535"),
        ({"SHUTDOWN_GRACE_SECONDS": "-1"}, "SHUTDOWN_GRACE_SECONDS='-1' must be at least 0.0"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' must be one of: debug, info, warning, error"),
    ],
)
def test_bad_values_fail_naming_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ServerConfig.from_env(Env(environ), 50051)
    assert str(raised.value) == message


def test_required_flags_and_addresses() -> None:
    env = Env({"FLAG": "yes", "BAD_FLAG": "maybe", "ADDR": "localhost", "GOOD_ADDR": "dns:///svc:50051"})
    with pytest.raises(ConfigError, match="MISSING is required"):
        env.string("MISSING")
    assert env.flag("FLAG", False) is True
    with pytest.raises(ConfigError, match="BAD_FLAG='maybe'"):
        env.flag("BAD_FLAG", False)
    with pytest.raises(ConfigError, match="ADDR='localhost' must look like host:port"):
        env.address("ADDR", "127.0.0.1:1")
    assert env.address("GOOD_ADDR", "127.0.0.1:1") == "dns:///svc:50051"


def test_data_dir_follows_ragchat_home() -> None:
    assert data_dir(Env({"RAGCHAT_HOME": "/srv/rc"}), "ingest") == Path("/srv/rc/ingest")
    assert data_dir(Env({"RAGCHAT_HOME": "/srv/rc", "DATA_DIR": "/data"}), "ingest") == Path("/data")


def test_aws_client_factory_applies_region_retries_and_endpoint() -> None:
    config = AwsConfig.from_env(
        Env(
            {
                "AWS_REGION": "ap-northeast-2",
                "AWS_RETRY_MODE": "adaptive",
                "AWS_MAX_ATTEMPTS": "7",
                "AWS_ENDPOINT_URL": "http://127.0.0.1:5999",
            }
        )
    )
    client = make_client("s3", config)
    assert client.meta.region_name == "ap-northeast-2"
    assert client.meta.endpoint_url == "http://127.0.0.1:5999"
    assert client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 7}
    with pytest.raises(ConfigError, match="AWS_RETRY_MODE='fast'"):
        AwsConfig.from_env(Env({"AWS_RETRY_MODE": "fast"}))
