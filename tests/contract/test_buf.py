"""The contracts pass buf lint, and buf breaking really catches a breaking change."""

from __future__ import annotations

import shutil
from pathlib import Path

from tools.commands.contracts.check import REPO, breaking, build_image, lint

CATALOG = Path("emporium/catalog/v1/product.proto")


def copy_contracts(destination: Path) -> Path:
    shutil.copytree(REPO / "proto", destination, ignore=shutil.ignore_patterns("BUILD.bazel"))
    return destination


def test_contracts_pass_lint(tmp_path: Path) -> None:
    result = lint(build_image(REPO / "proto", tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_lint_reports_an_undocumented_message(tmp_path: Path) -> None:
    proto = copy_contracts(tmp_path / "proto")
    path = proto / CATALOG
    path.write_text(path.read_text().replace("// Product is something the shop sells.\n", ""))
    result = lint(build_image(proto, tmp_path / "out"))
    assert result.returncode != 0
    assert 'Message "Product" should have a non-empty comment' in result.stdout


def test_breaking_reports_a_changed_field_number(tmp_path: Path) -> None:
    baseline = build_image(REPO / "proto", tmp_path / "baseline")
    proto = copy_contracts(tmp_path / "proto")
    path = proto / CATALOG
    text = path.read_text()
    assert "string sku = 2 [" in text
    path.write_text(text.replace("string sku = 2 [", "string sku = 12 ["))
    result = breaking(build_image(proto, tmp_path / "changed"), baseline)
    assert result.returncode != 0
    assert "sku" in result.stdout


def test_unchanged_contracts_are_not_breaking(tmp_path: Path) -> None:
    baseline = build_image(REPO / "proto", tmp_path / "a")
    current = build_image(copy_contracts(tmp_path / "proto"), tmp_path / "b")
    result = breaking(current, baseline)
    assert result.returncode == 0, result.stdout + result.stderr
