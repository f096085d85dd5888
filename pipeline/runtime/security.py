"""Kafka client security from the environment: TLS, client certificates, SASL/SCRAM.

    KAFKA_SECURITY_PROTOCOL   PLAINTEXT (default) | SSL | SASL_SSL | SASL_PLAINTEXT
    KAFKA_SASL_MECHANISM      SCRAM-SHA-512 (default) | SCRAM-SHA-256 | PLAIN
    KAFKA_SASL_USERNAME       the SASL user (needed by SASL_SSL and SASL_PLAINTEXT)
    KAFKA_SASL_PASSWORD       its password
    KAFKA_SSL_CAFILE          PEM file of the CA(s) that signed the brokers' certificates
    KAFKA_SSL_CERTFILE        PEM file of this client's certificate (mTLS), may hold the key too
    KAFKA_SSL_KEYFILE         PEM file of its private key
    KAFKA_SSL_KEY_PASSWORD    the key's password, when it is encrypted
    KAFKA_SSL_CHECK_HOSTNAME  true (default) | false

One model feeds every client: `aiokafka_kwargs()` the producers, consumers and admin clients,
`faust_credentials()` the worker. Passwords are `SecretStr`: no repr, log line, metric or error
message shows them. `check_access()` signs in once before the worker starts (and `explain()`
after a failed connection), so rejected credentials or an untrusted certificate end the command
in a second with the variable to fix, not a retry loop or a traceback.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.core.errors import ConfigError

if TYPE_CHECKING:
    from faust.auth import Credentials

__all__ = ["ENV", "KafkaSecurity"]

Protocol = Literal["PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT"]
Mechanism = Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
PROTOCOLS: tuple[Protocol, ...] = ("PLAINTEXT", "SSL", "SASL_SSL", "SASL_PLAINTEXT")
MECHANISMS: tuple[Mechanism, ...] = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
TLS: tuple[Protocol, ...] = ("SSL", "SASL_SSL")
SASL: tuple[Protocol, ...] = ("SASL_SSL", "SASL_PLAINTEXT")
SOURCE = "environment"  # what a ConfigError names instead of a file

# field -> environment variable
ENV = {
    "protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
    "ssl_certfile": "KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "KAFKA_SSL_KEYFILE",
    "ssl_key_password": "KAFKA_SSL_KEY_PASSWORD",
    "ssl_check_hostname": "KAFKA_SSL_CHECK_HOSTNAME",
}
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


class KafkaSecurity(BaseModel):
    """How this process signs in to Kafka. Construction checks the settings fit together and
    raises `ConfigError` naming the variable to fix; secrets stay hidden in every repr."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    protocol: Protocol = "PLAINTEXT"
    sasl_mechanism: Mechanism = "SCRAM-SHA-512"
    sasl_username: str | None = Field(default=None, min_length=1)
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @field_validator("protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("ssl_check_hostname", mode="before")
    @classmethod
    def _flag(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if found := self.problems():
            raise ConfigError(SOURCE, found)  # not a ValueError: pydantic passes it on as is
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KafkaSecurity:
        """The settings in the `KAFKA_*` variables above; an empty variable counts as unset."""
        e = os.environ if env is None else env
        given = {f: e[v] for f, v in ENV.items() if e.get(v, "").strip()}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            raise ConfigError(
                SOURCE, [_field_problem(err, given) for err in exc.errors()]
            ) from None

    def problems(self) -> list[str]:
        """What does not fit together, each with the variable and the fix."""
        p, found = self.protocol, []
        if p in SASL:
            for field in ("sasl_username", "sasl_password"):
                if getattr(self, field) is None:
                    found.append(
                        f"{ENV[field]} is not set: KAFKA_SECURITY_PROTOCOL={p} signs in with a "
                        f"user name and password (KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD)"
                    )
        else:
            sasl = {"sasl_username", "sasl_password", "sasl_mechanism"} & self.model_fields_set
            found += [_unused(ENV[f], p, "SASL_SSL") for f in sorted(sasl)]
        if p not in TLS:
            tls = {f for f in ENV if f.startswith("ssl_")} & self.model_fields_set
            found += [_unused(ENV[f], p, "SSL or SASL_SSL") for f in sorted(tls)]
            return found
        for field in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, field)
            if path is not None and not Path(path).is_file():
                found.append(f"{ENV[field]}={path}: no such file: give the path of a PEM file")
        if self.ssl_keyfile and not self.ssl_certfile:
            found.append(
                "KAFKA_SSL_KEYFILE is set without KAFKA_SSL_CERTFILE: set KAFKA_SSL_CERTFILE "
                "to this client's certificate (PEM)"
            )
        if self.ssl_key_password and not self.ssl_certfile:
            found.append(
                "KAFKA_SSL_KEY_PASSWORD is set without a key: set KAFKA_SSL_CERTFILE and "
                "KAFKA_SSL_KEYFILE, or unset KAFKA_SSL_KEY_PASSWORD"
            )
        return found

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of SSL and SASL_SSL (None otherwise): the CA file, or the system's
        CAs, and the client certificate when one is given."""
        if self.protocol not in TLS:
            return None
        # Imported here: config.py reads these settings, and the core under it stays free of
        # Kafka (tests/unit/test_layout.py).
        from aiokafka.helpers import create_ssl_context

        try:
            context: ssl.SSLContext = create_ssl_context(cafile=self.ssl_cafile)
        except ssl.SSLError as exc:
            raise ConfigError(
                SOURCE,
                [
                    f"KAFKA_SSL_CAFILE={self.ssl_cafile}: no CA certificate in it ({exc.reason}): "
                    "give the PEM file of the CA that signed the brokers' certificates"
                ],
            ) from None
        if self.ssl_certfile:
            try:
                context.load_cert_chain(
                    self.ssl_certfile, self.ssl_keyfile, _reveal(self.ssl_key_password)
                )
            except ssl.SSLError as exc:
                raise ConfigError(SOURCE, [_key_problem(self, exc)]) from None
        if not self.ssl_check_hostname:
            context.check_hostname = False
        return context

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for AIOKafkaProducer, AIOKafkaConsumer and AIOKafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.protocol in TLS:
            kwargs["ssl_context"] = self.ssl_context()
        if self.protocol in SASL:
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_username,
                "sasl_plain_password": _reveal(self.sasl_password),
            }
        return kwargs

    def faust_credentials(self) -> Credentials | None:
        """`broker_credentials` for faust.App: None for PLAINTEXT, `SSLCredentials` with the
        context for SSL (faust's own default context cannot be built), `SASLCredentials`
        for SASL (with the context over TLS; faust's repr of it shows the user name only)."""
        from faust.auth import SASLCredentials, SSLCredentials

        if self.protocol == "PLAINTEXT":
            return None
        if self.protocol == "SSL":
            return SSLCredentials(self.ssl_context())
        return SASLCredentials(
            username=self.sasl_username,
            password=_reveal(self.sasl_password),
            ssl_context=self.ssl_context(),
            mechanism=self.sasl_mechanism,
        )

    def who(self) -> str:
        """Who this client is to Kafka, in the words of its settings (no secret)."""
        if self.protocol in SASL:
            return f"KAFKA_SASL_USERNAME={self.sasl_username}"
        if self.protocol == "SSL" and self.ssl_certfile:
            return f"the certificate in KAFKA_SSL_CERTFILE={self.ssl_certfile}"
        return f"an anonymous client (KAFKA_SECURITY_PROTOCOL={self.protocol}, no credentials)"


def _reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()


def _unused(variable: str, protocol: str, wanted: str) -> str:
    return (
        f"{variable} is set but KAFKA_SECURITY_PROTOCOL={protocol} does not use it: "
        f"set KAFKA_SECURITY_PROTOCOL to {wanted}, or unset {variable}"
    )


def _field_problem(err: Any, given: dict[str, str]) -> str:
    field = str(err["loc"][0]) if err["loc"] else ""
    variable = ENV.get(field, field)
    value = given.get(field, "")
    if field == "protocol":
        return f"{variable}={value!r} is not a protocol Casewatch knows: use {', '.join(PROTOCOLS)}"
    if field == "sasl_mechanism":
        return f"{variable}={value!r} is not supported: use {', '.join(MECHANISMS)}"
    if field == "ssl_check_hostname":
        return f"{variable}={value!r} is not true or false: write true or false"
    return f"{variable}: {err['msg']}"


def _key_problem(security: KafkaSecurity, exc: ssl.SSLError) -> str:
    files = f"KAFKA_SSL_CERTFILE={security.ssl_certfile}"
    if security.ssl_keyfile:
        files += f" and KAFKA_SSL_KEYFILE={security.ssl_keyfile}"
    hint = (
        "check KAFKA_SSL_KEY_PASSWORD"
        if security.ssl_key_password
        else "set KAFKA_SSL_KEY_PASSWORD if the key is encrypted"
    )
    return f"{files}: the certificate and key cannot be loaded ({exc.reason or exc}): {hint}"
