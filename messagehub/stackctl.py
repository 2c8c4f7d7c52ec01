"""Starting and stopping messagehub on one machine: the stack and the services.

``messagehub up`` calls :func:`up`: it starts the local infrastructure
(Kafka, PostgreSQL, Dovecot, an SMTP sink), applies the database schema,
creates the topics and starts the five services, each a background process
with its own log and pid file in the state dir. ``messagehub down`` stops
them all; every other command finds the running stack through
``messagehub.json`` in the state dir, so none of them needs flags.

The state dir is ``MESSAGEHUB_STATE_DIR`` (default
``/var/tmp/messagehub/local``); the ports are ``MESSAGEHUB_PORT_BASE`` plus
fixed offsets (default base 17000), so a test stack can run beside the demo.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from messagehub import db, topics
from messagehub import secrets as secret_store
from messagehub.localstack.processes import ManagedProcess, port_is_open
from messagehub.localstack.errors import LocalStackError
from messagehub.localstack.stack import LocalStack
from messagehub.settings import Settings, as_environment

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = "/var/tmp/messagehub/local"
DEFAULT_PORT_BASE = 17000
STACK_FILE = "messagehub.json"
INBOUND_DOMAIN = "inbound.messagehub.localhost"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    metrics_offset: int


SERVICES = (
    ServiceSpec("ingest", "services.ingest", 101),
    ServiceSpec("router", "services.router", 102),
    ServiceSpec("assign", "services.assign", 103),
    ServiceSpec("outbound", "services.outbound", 104),
    ServiceSpec("api", "services.api", 105),
)
INGEST_SMTP_OFFSET = 26
INGEST_HTTP_OFFSET = 81
API_HTTP_OFFSET = 80


# glibc raises its mmap threshold each time a large block is freed (see
# mallopt(3)), so later multi-megabyte mail buffers come from the heap, which
# keeps its peak size. A fixed threshold hands such buffers back to the OS
# when freed: with it, ingest held 123 MB instead of 189 MB after 3,600 mails
# of the benchmark's mix. The caller's environment can still override it.
SERVICE_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


class StackNotRunning(RuntimeError):
    """No stack has been started in the state dir; run `messagehub up` first."""


def state_dir_from_env() -> Path:
    return Path(os.environ.get("MESSAGEHUB_STATE_DIR", DEFAULT_STATE_DIR))


def port_base_from_env() -> int:
    return int(os.environ.get("MESSAGEHUB_PORT_BASE", DEFAULT_PORT_BASE))


def local_stack(state_dir: Path | None = None, port_base: int | None = None) -> LocalStack:
    return LocalStack(state_dir or state_dir_from_env(), port_base or port_base_from_env())


def service_settings(stack: LocalStack, spec: ServiceSpec, secret_key: str = "",
                     api_token: str = "", encryption_keys: str = "",
                     ingest_token: str = "") -> Settings:
    """Return the settings one service process of this stack runs with."""
    base = stack.port_base
    return Settings(
        kafka_bootstrap=stack.kafka_bootstrap,
        database_url=stack.database_url,
        inbound_domain=INBOUND_DOMAIN,
        ingest_smtp_port=base + INGEST_SMTP_OFFSET,
        relay_smtp_host="127.0.0.1",
        relay_smtp_port=stack.smtp_sink_port,
        # The sink is a plaintext relay on loopback without AUTH.
        relay_smtp_encryption="none",
        tls_ca_file=str(stack.imap_ca_file),
        encryption_keys=encryption_keys,
        metrics_port=base + spec.metrics_offset,
        api_port=base + API_HTTP_OFFSET,
        secret_key=secret_key,
        api_token=api_token,
        faust_data_dir=str(stack.state_dir / "faust"),
        ingest_http_port=base + INGEST_HTTP_OFFSET,
        ingest_http_token=ingest_token,
    )


def _local_secret(state_dir: Path, name: str) -> str:
    """Return a random secret kept in the state dir, creating it on first use."""
    path = state_dir / name
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48), encoding="ascii")
    return path.read_text(encoding="ascii").strip()


def _local_encryption_key(state_dir: Path) -> str:
    """Return the Fernet key kept in the state dir, creating it on first use."""
    path = state_dir / "encryption_key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secret_store.generate_key(), encoding="ascii")
    return path.read_text(encoding="ascii").strip()


def _service_process(stack: LocalStack, spec: ServiceSpec, secret_key: str = "",
                     api_token: str = "", encryption_keys: str = "",
                     ingest_token: str = "") -> ManagedProcess:
    """Describe one service process; stopping or inspecting it needs no secret."""
    settings = service_settings(stack, spec, secret_key, api_token, encryption_keys,
                                ingest_token)
    ready_port = settings.ingest_smtp_port if spec.name == "ingest" else (
        settings.api_port if spec.name == "api" else settings.metrics_port)
    return ManagedProcess(
        f"service-{spec.name}", [sys.executable, "-m", spec.module], stack.state_dir / "services",
        ready_check=lambda: port_is_open(ready_port), start_timeout_s=90.0,
        env={**SERVICE_MALLOC_ENV, **os.environ, **as_environment(settings)}, cwd=REPO_ROOT,
        listen_ports=(ready_port,))


def create_topics(bootstrap: str, partitions: int) -> None:
    """Create every messagehub topic that does not exist yet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from kafka import KafkaAdminClient
        from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="messagehub-up")
    try:
        existing = set(admin.list_topics())
        missing = {name: {"num_partitions": partitions, "replication_factor": 1}
                   for name in topics.ALL_TOPICS if name not in existing}
        if topics.IMAP_ASSIGNMENT in missing:
            missing[topics.IMAP_ASSIGNMENT]["num_partitions"] = max(
                partitions, topics.IMAP_ASSIGNMENT_PARTITIONS)
        if missing:
            try:
                admin.create_topics(missing, wait_for_metadata=True)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


def up(state_dir: Path | None = None, port_base: int | None = None,
       partitions: int = 4) -> dict[str, Any]:
    """Start the stack and the services; return what :func:`status` returns."""
    stack = local_stack(state_dir, port_base)
    stack.start()
    db.apply_schema(stack.database_url)
    create_topics(stack.kafka_bootstrap, partitions)

    secret_key = _local_secret(stack.state_dir, "secret_key")
    api_token = _local_secret(stack.state_dir, "api_token")
    encryption_keys = _local_encryption_key(stack.state_dir)
    ingest_token = _local_secret(stack.state_dir, "ingest_token")
    _write_stack_info(stack, api_token, encryption_keys, ingest_token)

    (stack.state_dir / "services").mkdir(parents=True, exist_ok=True)
    for spec in SERVICES:
        _service_process(stack, spec, secret_key, api_token, encryption_keys,
                         ingest_token).start()
    return status(state_dir, port_base)


def _write_stack_info(stack: LocalStack, api_token: str, encryption_keys: str = "",
                      ingest_token: str = "") -> None:
    # The file holds the database password and the API token: owner only.
    path = stack.state_dir / STACK_FILE
    path.touch(mode=0o600)
    path.write_text(json.dumps({
        "state_dir": str(stack.state_dir),
        "port_base": stack.port_base,
        "database_url": stack.database_url,
        "kafka_bootstrap": stack.kafka_bootstrap,
        "inbound_domain": INBOUND_DOMAIN,
        "ingest_smtp": f"127.0.0.1:{stack.port_base + INGEST_SMTP_OFFSET}",
        "sink_dir": str(stack.sink_dir),
        "imap": f"127.0.0.1:{stack.imap_port}",
        "imaps": f"127.0.0.1:{stack.imaps_port}",
        "tls_ca_file": str(stack.imap_ca_file),
        "encryption_keys": encryption_keys,
        "dovecot_config": str(stack.state_dir / "dovecot" / "dovecot.conf"),
        "ingest_http": f"http://127.0.0.1:{stack.port_base + INGEST_HTTP_OFFSET}",
        "ingest_token": ingest_token,
        "api": f"http://127.0.0.1:{stack.port_base + API_HTTP_OFFSET}",
        "api_token": api_token,
    }, indent=2), encoding="utf-8")


def down(state_dir: Path | None = None, port_base: int | None = None) -> None:
    """Stop the services, then the stack; data stays in the state dir."""
    stack = local_stack(state_dir, port_base)
    if not stack.state_dir.exists():
        return
    for spec in reversed(SERVICES):
        _service_process(stack, spec).stop()
    stack.stop()


def reset(state_dir: Path, port_base: int) -> None:
    """Stop the stack in ``state_dir``, whatever port base it was started with, and delete it.

    Test fixtures call this before they start a stack of their own, so a
    state dir left by a run with other ports does not stop the next run.
    """
    if not state_dir.exists():
        return
    try:
        recorded = LocalStack.load(state_dir).port_base
    except LocalStackError:
        recorded = port_base
    down(state_dir, recorded)
    local_stack(state_dir, recorded).wipe()


def status(state_dir: Path | None = None, port_base: int | None = None) -> dict[str, Any]:
    """Return each component and service: running or not, and its address."""
    stack = local_stack(state_dir, port_base)
    components: dict[str, Any] = dict(stack.status())
    for spec in SERVICES:
        process = _service_process(stack, spec)
        settings = service_settings(stack, spec)
        address = {"ingest": f"127.0.0.1:{settings.ingest_smtp_port}",
                   "api": f"127.0.0.1:{settings.api_port}"}.get(spec.name)
        components[spec.name] = {
            "running": process.is_running(),
            "address": address or f"127.0.0.1:{settings.metrics_port}",
            "metrics": f"http://127.0.0.1:{settings.metrics_port}/metrics",
            "pid": process.pid,
        }
    return components


def stack_info(state_dir: Path | None = None) -> dict[str, Any]:
    """Return what `messagehub up` recorded about the running stack."""
    path = (state_dir or state_dir_from_env()) / STACK_FILE
    if not path.exists():
        raise StackNotRunning(f"no stack found in {path.parent}: run `messagehub up` first")
    return json.loads(path.read_text(encoding="utf-8"))
