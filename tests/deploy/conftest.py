"""Fixtures of the deploy tests: the tools, the rendered overlays and the CRD schemas.

A tool that is not installed skips the tests that need it, with the command
that installs it (``deploy/local/install.sh`` installs all of them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_helpers import OVERLAYS, crd_schemas, find_tool, kustomize_build


@pytest.fixture(scope="session")
def kustomize() -> str:
    path = find_tool("kustomize")
    if path is None:
        pytest.skip("kustomize not found: run deploy/local/install.sh, or "
                    "`go install sigs.k8s.io/kustomize/kustomize/v5@v5.8.1`")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    path = find_tool("promtool")
    if path is None:
        pytest.skip("promtool not found: run deploy/local/install.sh, or "
                    "`apt-get install prometheus` (Debian)")
    return path


@pytest.fixture(scope="session")
def rendered(kustomize: str) -> dict[str, list[dict[str, Any]]]:
    """Each overlay's resources, as `kustomize build` renders them."""
    return {name: kustomize_build(kustomize, path) for name, path in OVERLAYS.items()}


@pytest.fixture(scope="session")
def crds_dir(shared_dir: Path) -> Path:
    path = shared_dir / "crds"
    if not path.is_dir():
        pytest.skip(f"operator CRDs not found at {path}: set MESSAGEHUB_SHARED_DIR")
    return path


@pytest.fixture(scope="session")
def custom_schemas(crds_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """JSON Schemas of the operators' custom resources, generated from their CRDs."""
    return crd_schemas(crds_dir)
