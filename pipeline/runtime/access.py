"""Signing in to Kafka once before a command starts, and saying what to fix when it fails.

`check_access()` signs in to the first bootstrap server that answers (TLS, then SASL), asks for
metadata and hangs up; `explain()` turns an error a client raised later into one line naming
the environment variable to fix. The settings themselves: pipeline/runtime/security.py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from aiokafka import errors
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.protocol.metadata import MetadataRequest

from pipeline.core.errors import KafkaAccessError, Unavailable
from pipeline.runtime.security import TLS, KafkaSecurity

REACH_SECONDS = 3.0  # a TCP connect to each bootstrap server, all at once
CHECK_SECONDS = 15.0  # one sign-in: TCP, TLS and SASL round trips
PROBE_SECONDS = 2.0  # a broker that wants a client certificate says so right after the handshake
_AUTHORIZATION = (
    errors.TopicAuthorizationFailedError,
    errors.GroupAuthorizationFailedError,
    errors.ClusterAuthorizationFailedError,
    errors.TransactionalIdAuthorizationFailed,
)
_WHAT = {
    errors.TopicAuthorizationFailedError: "topic",
    errors.GroupAuthorizationFailedError: "consumer group",
    errors.ClusterAuthorizationFailedError: "a cluster operation",
    errors.TransactionalIdAuthorizationFailed: "transactional id",
}


async def check_reachable(bootstrap: str, seconds: float = REACH_SECONDS) -> None:
    """Open a TCP connection to every bootstrap server at once and hang up; `Unavailable` names
    each address and why when none answers. Faust, left to find out, retries and then ends
    in a traceback of dozens of lines."""
    hosts = [(host, port) for host, port, _ in collect_hosts(bootstrap, randomize=False)]
    why = await asyncio.gather(*(_connect(host, port, seconds) for host, port in hosts))
    if all(why):
        failed = ", ".join(f"{h}:{p} ({w})" for (h, p), w in zip(hosts, why, strict=True))
        raise Unavailable(unreachable(failed))


def unreachable(where: str) -> str:
    """The one line of a command that cannot reach Kafka at `where`."""
    return (
        f"cannot reach Kafka at {where}: start it (deploy/kafka/local-kafka start), "
        "or set KAFKA_BOOTSTRAP_SERVERS to your brokers"
    )


async def _connect(host: str, port: int, seconds: float) -> str | None:
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        return f"no answer within {seconds:g}s"
    except socket.gaierror:
        return "unknown host"
    except ConnectionRefusedError:
        return "connection refused"
    except OSError as exc:
        return exc.strerror or str(exc)
    writer.close()
    return None


async def check_access(bootstrap: str, security: KafkaSecurity) -> None:
    """Sign in to the first bootstrap server that answers, ask for metadata, hang up.
    `KafkaAccessError` says what to fix when Kafka rejects the credentials, the TLS handshake
    fails or the broker hangs up mid-way; servers that cannot be reached are left to the
    client that follows (it reports that in its own words). PLAINTEXT has nothing to check."""
    if security.protocol == "PLAINTEXT":
        return
    kwargs = security.aiokafka_kwargs()
    for host, port, _ in collect_hosts(bootstrap, randomize=False):
        where = f"{host}:{port}"
        try:
            async with asyncio.timeout(CHECK_SECONDS):
                conn = await create_conn(host, port, client_id="casewatch-check", **kwargs)
                try:
                    await conn.send(MetadataRequest([]))
                finally:
                    conn.close()
        except (errors.SaslAuthenticationFailed, errors.AuthenticationFailedError):
            raise KafkaAccessError(_rejected(security, where)) from None
        except errors.UnsupportedSaslMechanismError:
            raise KafkaAccessError(
                f"Kafka at {where} does not offer KAFKA_SASL_MECHANISM="
                f"{security.sasl_mechanism}: use the mechanism its SASL listener enables"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise KafkaAccessError(_untrusted(security, where, exc)) from None
        except ssl.SSLError as exc:
            raise KafkaAccessError(_tls_failed(security, where, exc)) from None
        except errors.KafkaConnectionError:
            # Connected, then the broker hung up while we signed in: a listener that wants
            # something else. TLS 1.3 reports a missing client certificate only after the
            # handshake, and aiokafka keeps the reason: a bare TLS probe reads it.
            raise KafkaAccessError(await _hung_up(security, host, port)) from None
        except (OSError, TimeoutError, errors.KafkaError):
            continue
        return


async def _hung_up(security: KafkaSecurity, host: str, port: int) -> str:
    where = f"{host}:{port}"
    if security.protocol in TLS:
        try:
            async with asyncio.timeout(PROBE_SECONDS):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=security.ssl_context()
                )
                try:
                    await reader.read(1)
                finally:
                    writer.close()
        except ssl.SSLError as exc:
            return _tls_failed(security, where, exc)
        except (OSError, TimeoutError):
            pass
    return (
        f"Kafka at {where} hung up while this client signed in with KAFKA_SECURITY_PROTOCOL="
        f"{security.protocol}: check that this is what the listener at {where} speaks "
        "(SSL and SASL_SSL listeners are on different ports)"
    )


def explain(exc: BaseException, bootstrap: str, security: KafkaSecurity) -> str | None:
    """One line saying what to fix when `exc` comes from the security settings, else None.
    A connection error is diagnosed by signing in once more (call this outside the loop)."""
    if isinstance(exc, errors.SaslAuthenticationFailed | errors.AuthenticationFailedError):
        return _rejected(security, bootstrap)
    if isinstance(exc, _AUTHORIZATION):
        what = _WHAT[type(exc)]
        named = ", ".join(str(a) for a in exc.args if a and not str(a).startswith("["))
        target = f"{what} {named}".strip() if what != "a cluster operation" else what
        return (
            f"Kafka denied {security.who()} access to {target} ({type(exc).__name__}): "
            "ask the cluster's admin for an ACL, or check that this is the right user"
        )
    if isinstance(exc, errors.KafkaConnectionError) and security.protocol != "PLAINTEXT":
        try:
            asyncio.run(check_access(bootstrap, security))
        except KafkaAccessError as refused:
            return str(refused)
    return None


def _rejected(security: KafkaSecurity, where: str) -> str:
    return (
        f"Kafka rejected the credentials of {security.who()} ({security.sasl_mechanism} "
        f"authentication failed at {where}): check KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"
    )


def _untrusted(security: KafkaSecurity, where: str, exc: ssl.SSLCertVerificationError) -> str:
    reason = exc.verify_message or exc.reason or "verification failed"
    if "hostname" in str(reason).lower() or "ip address mismatch" in str(reason).lower():
        fix = (
            "connect with a name the certificate lists (KAFKA_BOOTSTRAP_SERVERS), or set "
            "KAFKA_SSL_CHECK_HOSTNAME=false on a trusted network"
        )
    else:
        fix = "set KAFKA_SSL_CAFILE to the PEM file of the CA that signed it"
    cafile = security.ssl_cafile or "the system's CAs"
    return f"the certificate of Kafka at {where} is not trusted by {cafile} ({reason}): {fix}"


def _tls_failed(security: KafkaSecurity, where: str, exc: ssl.SSLError) -> str:
    reason = str(exc.reason or exc)
    refused = any(
        a in reason.upper() for a in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA")
    )
    if refused and not security.ssl_certfile:
        fix = (
            "this listener wants a client certificate: set KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE"
        )
    elif refused:
        fix = (
            f"Kafka does not accept the certificate in KAFKA_SSL_CERTFILE={security.ssl_certfile}: "
            "have a CA the brokers trust sign it"
        )
    else:
        fix = (
            f"check that KAFKA_SECURITY_PROTOCOL={security.protocol} is what the listener at "
            f"{where} speaks"
        )
    return f"TLS with Kafka at {where} failed ({reason}): {fix}"
