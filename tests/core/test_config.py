"""Settings checked at start, compatibly: what an earlier README told users to set keeps working."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from app.core.config import Settings, settings_problem


def test_a_base_url_ending_in_a_version_keeps_working_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="app.core.config"):
        settings = Settings(_env_file=None, whatsapp_api_base_url="https://graph.facebook.com/v20.0/")
    assert (settings.whatsapp_api_base_url, settings.whatsapp_api_version) == ("https://graph.facebook.com", "v20.0")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "WHATSAPP_API_VERSION" in warnings[0] and "v20.0" in warnings[0]


def test_an_unversioned_base_url_is_taken_as_it_is(caplog):
    with caplog.at_level(logging.WARNING, logger="app.core.config"):
        settings = Settings(_env_file=None, whatsapp_api_base_url="http://127.0.0.1:8080/graph/")
    assert (settings.whatsapp_api_base_url, settings.whatsapp_api_version) == ("http://127.0.0.1:8080/graph", "v25.0")
    assert caplog.records == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://app:pw@db:5432/app", "postgresql+psycopg://app:pw@db:5432/app"),
        ("postgresql://app@db/app", "postgresql+psycopg://app@db/app"),
        ("postgresql+psycopg://app@db/app", "postgresql+psycopg://app@db/app"),
    ],
)
def test_postgresql_urls_are_taken_with_the_driver_named(url, expected):
    assert Settings(_env_file=None, database_url=url).database_url == expected


@pytest.mark.parametrize("url", ["not a url", "mysql://app:secret-pw@db/app", "sqlite:///app.db", "postgresql:/app"])
def test_any_other_database_url_is_one_line_that_never_repeats_it(url):
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, database_url=url)
    problem = settings_problem(refused.value)
    assert problem.startswith("invalid settings: DATABASE_URL: must be a PostgreSQL URL") and "\n" not in problem
    assert url not in problem and "secret-pw" not in problem


@pytest.mark.parametrize(
    ("field", "name", "at_least_one"),
    [("web_tenants", "WEB_TENANTS", True), ("whatsapp_profile_name_tenants", "WHATSAPP_PROFILE_NAME_TENANTS", False)],
)
def test_tenant_lists_are_trimmed_deduplicated_and_checked_entry_by_entry(field, name, at_least_one):
    assert getattr(Settings(_env_file=None, **{field: " acme, globex ,acme,, "}), field) == ("acme", "globex")
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, **{field: "acme,bad tenant"})
    assert f"{name} entry 2 is not a valid tenant id" in settings_problem(refused.value)
    if at_least_one:
        with pytest.raises(ValidationError, match=f"{name} must name at least one tenant"):
            Settings(_env_file=None, **{field: " , "})
    else:
        assert getattr(Settings(_env_file=None, **{field: ""}), field) == ()
