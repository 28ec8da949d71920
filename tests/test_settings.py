"""facerec.settings: every setting is read from the environment and used somewhere."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from facerec.settings import DELIVERY_CEILING, Settings

ROOT = Path(__file__).resolve().parent.parent
CODE = [p for package in ("facerec", "rest", "worker", "logs", "cli")
        for p in (ROOT / package).rglob("*.py") if p.name != "settings.py"]


def _holder(node: ast.expr) -> str:
    """The name an attribute is read from: `settings` for settings.x and self._settings.x."""
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


def attributes_read() -> set[str]:
    """Every `<...settings>.name` read in the code outside settings.py."""
    names: set[str] = set()
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load)
                    and _holder(node.value).lower().endswith("settings")):
                names.add(node.attr)
    return names


def test_every_setting_is_read_somewhere_outside_settings_py() -> None:
    read = attributes_read()
    unused = [f.name for f in fields(Settings) if f.name not in read]
    assert unused == [], f"settings accepted and ignored: {unused}"


def test_every_setting_comes_from_its_upper_case_environment_variable() -> None:
    defaults = Settings()
    env = {"REDIS_PORT": "7000", "MATCH_TOLERANCE": "0.5", "IMAGE_STORE_KEEP": "false",
           "FETCH_ALLOW_NETWORKS": "10.0.0.0/8, 192.168.1.0/24", "MAX_DELIVERIES": "2",
           "HOSTNAME": "pod-7"}
    s = Settings.from_env(env)
    assert (s.redis_port, s.match_tolerance, s.image_store_keep, s.max_deliveries,
            s.hostname) == (7000, 0.5, False, 2, "pod-7")
    assert [str(n) for n in s.fetch_allow_networks] == ["10.0.0.0/8", "192.168.1.0/24"]
    assert s.rabbitmq_heartbeat == defaults.rabbitmq_heartbeat


@pytest.mark.parametrize(("name", "value"), [
    ("MAX_DELIVERIES", "0"), ("MAX_DELIVERIES", str(DELIVERY_CEILING + 1)), ("PREFETCH", "0"),
    ("MATCH_TOLERANCE", "0"), ("DETECTION_MODEL", "sift"), ("IMAGE_STORE_KEEP", "maybe")])
def test_a_setting_out_of_range_is_refused_at_start_up(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})
