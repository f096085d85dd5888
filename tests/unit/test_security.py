"""Kafka client security from the environment (no broker): parsing, the problems a person
reads, what aiokafka and faust are given, and that no secret shows anywhere."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess

import pytest
from aiokafka import errors
from faust.auth import SASLCredentials, SSLCredentials
from faust.types.auth import AuthProtocol, SASLMechanism

from pipeline.config import Runtime
from pipeline.core.errors import ConfigError
from pipeline.runtime.access import check_access, explain
from pipeline.runtime.security import KafkaSecurity

PASSWORD = "s3cret-Pa55word"
KEY_PASSWORD = "k3y-Pa55word"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, and a client certificate with a plain key and with an encrypted one."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing: apt-get install openssl")
    d = tmp_path_factory.mktemp("pki")

    def sh(command: str) -> None:  # no argument holds a space
        subprocess.run(["openssl", *command.split()], cwd=d, check=True, capture_output=True)

    sh("req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ca -keyout ca.key -out ca.crt")
    sh("req -newkey rsa:2048 -nodes -subj /CN=alice -keyout alice.key -out alice.csr")
    sh("x509 -req -in alice.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out alice.crt")
    sh(f"pkcs8 -topk8 -in alice.key -out alice.enc.key -passout pass:{KEY_PASSWORD}")
    (d / "junk.pem").write_text("not a certificate\n")
    return {
        name: str(d / name)
        for name in ("ca.crt", "alice.crt", "alice.key", "alice.enc.key", "junk.pem")
    }


def sasl_env(**extra: str) -> dict[str, str]:
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_USERNAME": "alice",
        "KAFKA_SASL_PASSWORD": PASSWORD,
    } | extra


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        KafkaSecurity.from_env(env)
    assert info.value.file == "environment"
    return info.value.problems


def test_no_variables_mean_plaintext_as_before() -> None:
    security = KafkaSecurity.from_env({})
    assert security.protocol == "PLAINTEXT"
    assert security.aiokafka_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert security.faust_credentials() is None
    assert Runtime.from_env({}).security == security


def test_empty_variables_count_as_unset() -> None:
    env = {"KAFKA_SECURITY_PROTOCOL": "", "KAFKA_SASL_USERNAME": " ", "KAFKA_SSL_CAFILE": ""}
    assert KafkaSecurity.from_env(env) == KafkaSecurity()


def test_sasl_ssl_gives_aiokafka_a_verifying_context_and_the_credentials(
    pki: dict[str, str],
) -> None:
    env = sasl_env(KAFKA_SECURITY_PROTOCOL="sasl_ssl", KAFKA_SSL_CAFILE=pki["ca.crt"])
    kwargs = Runtime.from_env(env).security.aiokafka_kwargs()
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "ca"),),)]


def test_sasl_plaintext_has_no_tls_and_the_mechanism_asked_for() -> None:
    env = sasl_env(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM="scram-sha-256")
    security = KafkaSecurity.from_env(env)
    assert security.aiokafka_kwargs() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD,
    }
    credentials = security.faust_credentials()
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol == AuthProtocol.SASL_PLAINTEXT
    assert credentials.mechanism == SASLMechanism.SCRAM_SHA_256
    assert credentials.ssl_context is None


def test_faust_gets_sasl_over_tls(pki: dict[str, str]) -> None:
    credentials = KafkaSecurity.from_env(
        sasl_env(KAFKA_SSL_CAFILE=pki["ca.crt"])
    ).faust_credentials()
    assert isinstance(credentials, SASLCredentials)
    assert credentials.protocol == AuthProtocol.SASL_SSL
    assert credentials.mechanism == SASLMechanism.SCRAM_SHA_512
    assert (credentials.username, credentials.password) == ("alice", PASSWORD)
    assert isinstance(credentials.ssl_context, ssl.SSLContext)


@pytest.mark.parametrize("key", ["alice.key", "alice.enc.key"])
def test_ssl_with_a_client_certificate(pki: dict[str, str], key: str) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CAFILE": pki["ca.crt"],
        "KAFKA_SSL_CERTFILE": pki["alice.crt"],
        "KAFKA_SSL_KEYFILE": pki[key],
        "KAFKA_SSL_CHECK_HOSTNAME": "false",
    }
    if key == "alice.enc.key":
        env["KAFKA_SSL_KEY_PASSWORD"] = KEY_PASSWORD
    security = KafkaSecurity.from_env(env)
    kwargs = security.aiokafka_kwargs()
    assert set(kwargs) == {"security_protocol", "ssl_context"}
    assert kwargs["security_protocol"] == "SSL"
    assert kwargs["ssl_context"].check_hostname is False
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    credentials = security.faust_credentials()
    assert isinstance(credentials, SSLCredentials)
    assert credentials.protocol == AuthProtocol.SSL
    assert isinstance(credentials.context, ssl.SSLContext)
    assert security.who() == f"the certificate in KAFKA_SSL_CERTFILE={pki['alice.crt']}"


def test_secrets_never_show(pki: dict[str, str]) -> None:
    env = sasl_env(
        KAFKA_SSL_CAFILE=pki["ca.crt"],
        KAFKA_SSL_CERTFILE=pki["alice.crt"],
        KAFKA_SSL_KEYFILE=pki["alice.enc.key"],
        KAFKA_SSL_KEY_PASSWORD=KEY_PASSWORD,
    )
    runtime = Runtime.from_env(env)
    shown = [
        repr(runtime),
        str(runtime),
        runtime.model_dump_json(),
        str(runtime.model_dump()),
        repr(runtime.security.faust_credentials()),
        runtime.security.who(),
        explain(errors.SaslAuthenticationFailed("bad"), "k:9093", runtime.security) or "",
    ]
    for text in shown:
        assert PASSWORD not in text
        assert KEY_PASSWORD not in text
    assert "alice" in repr(runtime)
    assert runtime.security.sasl_password is not None
    assert runtime.security.sasl_password.get_secret_value() == PASSWORD


def test_a_wrong_key_password_names_the_variable(pki: dict[str, str]) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_CERTFILE": pki["alice.crt"],
        "KAFKA_SSL_KEYFILE": pki["alice.enc.key"],
        "KAFKA_SSL_KEY_PASSWORD": "wrong-" + KEY_PASSWORD,
    }
    with pytest.raises(ConfigError) as info:
        KafkaSecurity.from_env(env).aiokafka_kwargs()
    (problem,) = info.value.problems
    assert problem.startswith(f"KAFKA_SSL_CERTFILE={pki['alice.crt']} and KAFKA_SSL_KEYFILE=")
    assert problem.endswith(": check KAFKA_SSL_KEY_PASSWORD")
    assert KEY_PASSWORD not in str(info.value)


def test_a_file_that_holds_no_ca_is_named(pki: dict[str, str]) -> None:
    security = KafkaSecurity.from_env(
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": pki["junk.pem"]}
    )
    with pytest.raises(ConfigError) as info:
        security.ssl_context()
    (problem,) = info.value.problems
    assert problem.startswith(f"KAFKA_SSL_CAFILE={pki['junk.pem']}: no CA certificate in it (")
    assert problem.endswith("give the PEM file of the CA that signed the brokers' certificates")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"KAFKA_SECURITY_PROTOCOL": "TLS"},
            [
                "KAFKA_SECURITY_PROTOCOL='TLS' is not a protocol Casewatch knows: "
                "use PLAINTEXT, SSL, SASL_SSL, SASL_PLAINTEXT"
            ],
        ),
        (
            sasl_env(KAFKA_SASL_MECHANISM="GSSAPI"),
            [
                "KAFKA_SASL_MECHANISM='GSSAPI' is not supported: use SCRAM-SHA-512, SCRAM-SHA-256, PLAIN"
            ],
        ),
        (
            {"KAFKA_SSL_CHECK_HOSTNAME": "maybe", "KAFKA_SECURITY_PROTOCOL": "SSL"},
            ["KAFKA_SSL_CHECK_HOSTNAME='maybe' is not true or false: write true or false"],
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": PASSWORD},
            [
                "KAFKA_SASL_USERNAME is not set: KAFKA_SECURITY_PROTOCOL=SASL_SSL signs in with "
                "a user name and password (KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)"
            ],
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "alice"},
            [
                "KAFKA_SASL_PASSWORD is not set: KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT signs in "
                "with a user name and password (KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)"
            ],
        ),
        (
            {"KAFKA_SASL_USERNAME": "alice", "KAFKA_SASL_PASSWORD": PASSWORD},
            [
                "KAFKA_SASL_PASSWORD is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use "
                "it: set KAFKA_SECURITY_PROTOCOL to SASL_SSL, or unset KAFKA_SASL_PASSWORD",
                "KAFKA_SASL_USERNAME is set but KAFKA_SECURITY_PROTOCOL=PLAINTEXT does not use "
                "it: set KAFKA_SECURITY_PROTOCOL to SASL_SSL, or unset KAFKA_SASL_USERNAME",
            ],
        ),
        (
            sasl_env(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SSL_CAFILE="/ca.pem"),
            [
                "KAFKA_SSL_CAFILE is set but KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT does not use "
                "it: set KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL, or unset KAFKA_SSL_CAFILE"
            ],
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "/nowhere/ca.pem"},
            ["KAFKA_SSL_CAFILE=/nowhere/ca.pem: no such file: give the path of a PEM file"],
        ),
    ],
)
def test_inconsistent_settings_name_the_variable_and_the_fix(
    env: dict[str, str], expected: list[str]
) -> None:
    found = problems(env)
    assert found == expected
    assert all(PASSWORD not in p for p in found)


def test_a_key_needs_its_certificate(pki: dict[str, str]) -> None:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SSL",
        "KAFKA_SSL_KEYFILE": pki["alice.key"],
        "KAFKA_SSL_KEY_PASSWORD": KEY_PASSWORD,
    }
    assert problems(env) == [
        "KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE: set KAFKA_SSL_CERTFILE to this "
        "client's certificate (PEM)",
        "KAFKA_SSL_KEY_PASSWORD is set without a key: set KAFKA_SSL_CERTFILE and "
        "KAFKA_SSL_KEYFILE, or unset KAFKA_SSL_KEY_PASSWORD",
    ]


def test_the_cli_reports_a_bad_environment_with_exit_2() -> None:
    import os
    import sys

    env = {**os.environ, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_USERNAME": "alice"}
    env.pop("KAFKA_SASL_PASSWORD", None)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "topics"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(
        "casewatch: invalid environment: KAFKA_SASL_PASSWORD is not set: "
    )
    assert "Traceback" not in result.stderr


def test_explain_turns_refusals_into_one_line() -> None:
    security = KafkaSecurity.from_env(sasl_env(KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT"))
    rejected = explain(errors.SaslAuthenticationFailed("x"), "k:9092", security)
    assert rejected == (
        "Kafka rejected the credentials of KAFKA_SASL_USERNAME=alice (SCRAM-SHA-512 "
        "authentication failed at k:9092): check KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
    )
    denied = explain(errors.TopicAuthorizationFailedError("casewatch.handler.vip"), "k", security)
    assert denied == (
        "Kafka denied KAFKA_SASL_USERNAME=alice access to topic casewatch.handler.vip "
        "(TopicAuthorizationFailedError): ask the cluster's admin for an ACL, or check that "
        "this is the right user"
    )
    group = explain(errors.GroupAuthorizationFailedError("casewatch"), "k", security)
    assert group is not None
    assert group.startswith(
        "Kafka denied KAFKA_SASL_USERNAME=alice access to consumer group casewatch ("
    )
    assert explain(errors.RequestTimedOutError(), "k", security) is None


def test_plaintext_connection_errors_are_left_alone() -> None:
    # Nothing to diagnose: the caller's "cannot reach Kafka" stays, and nothing is dialled.
    plain = KafkaSecurity()
    assert explain(errors.KafkaConnectionError("x"), "127.0.0.1:1", plain) is None
    asyncio.run(check_access("127.0.0.1:1", plain))
