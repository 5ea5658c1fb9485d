"""The web app fixtures every web test module shares (loaded by conftest.py).

``cfg`` (two targets, API/webhook/login tokens written), ``store`` is conftest's
(on the fake ``clock``), ``core`` answers from and opens incidents in that
store, ``metrics`` is a fresh registry, ``app`` the real Flask app over them,
``client`` its test client. A module overrides one by defining its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from api_support import TriggerCore, with_tokens
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from web_support import web_config

from breakglass.config import Config
from breakglass.metrics import Metrics
from breakglass.store import Store
from breakglass.web.app import create_app


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """Targets "devvm" and "other", with token files for the API, the webhook and the login."""
    return with_tokens(web_config(tmp_path), tmp_path)


@pytest.fixture
def core(cfg: Config, store: Store) -> TriggerCore:
    """A core handle over the store; ``core.is_alive = False`` plays a dead loop."""
    return TriggerCore(cfg, store)


@pytest.fixture
def metrics(cfg: Config) -> Metrics:
    """A fresh registry with every target's series initialised."""
    m = Metrics(CollectorRegistry())
    for t in cfg.targets:
        m.init_target(t.name)
    return m


@pytest.fixture
def app(cfg: Config, store: Store, metrics: Metrics, core: TriggerCore) -> Flask:
    """The real app over these parts."""
    return create_app(cfg, store=store, metrics=metrics, core=core, testing=True)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """The app's test client."""
    return app.test_client()
