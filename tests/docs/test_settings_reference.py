"""The settings reference and .env.example are what docs/gen_settings.py writes from Settings today."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def generator():
    """docs/gen_settings.py as a module (docs/ is not a package: mkdocs reads it)."""
    spec = importlib.util.spec_from_file_location("gen_settings", ROOT / "docs" / "gen_settings.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_setting_has_a_description():
    docstrings = generator().DOCSTRINGS
    assert [name for name in Settings.model_fields if not docstrings.get(name, "").strip()] == []


def test_the_committed_reference_and_env_example_are_current():
    gen = generator()
    stale = [str(path.relative_to(ROOT)) for path in gen.stale()]
    assert stale == [], "run .venv/bin/python docs/gen_settings.py and commit the result"


def test_env_example_names_every_setting_at_its_default():
    lines = (ROOT / ".env.example").read_text().splitlines()
    assigned = dict(
        line.removeprefix("# ").split("=", 1)
        for line in lines
        if line.startswith("# ") and "=" in line and line.removeprefix("# ").split("=", 1)[0].isupper()
    )
    assert set(assigned) == {name.upper() for name in Settings.model_fields}
    assert assigned["DB_POOL_SIZE"] == "5" and assigned["DATABASE_URL"] == "" and assigned["WEB_TENANTS"] == "default"
    # Uncommented, every line is accepted by Settings as it stands (the defaults, and unset ones left empty).
    values = {key.lower(): value for key, value in assigned.items() if value != ""}
    Settings(_env_file=None, **values)
