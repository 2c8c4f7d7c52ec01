"""yamllint over every YAML file under deploy/, with tests/deploy/yamllint.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
from yamllint import linter  # type: ignore[import-untyped]
from yamllint.config import YamlLintConfig  # type: ignore[import-untyped]

from tests.deploy.deploy_helpers import REPO_ROOT

CONFIG = Path(__file__).with_name("yamllint.yaml")
YAML_FILES = sorted(path for pattern in ("*.yaml", "*.yml")
                    for path in (REPO_ROOT / "deploy").rglob(pattern)
                    if "kafka/libs" not in path.as_posix())


def lint(text: str, path: Path) -> list[str]:
    config = YamlLintConfig(file=str(CONFIG))
    return [f"{path.name}:{problem.line}:{problem.column}: {problem.message} ({problem.rule})"
            for problem in linter.run(text, config, str(path))]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_yaml__lint_clean(path: Path) -> None:
    assert lint(path.read_text(encoding="utf-8"), path) == []


def test_yamllint__catches_bad_indentation() -> None:
    broken = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n   labels: {}\n"

    assert lint(broken, Path("broken.yaml")) != []
