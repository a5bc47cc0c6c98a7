"""What the store says when a catalog cannot be used: a server that refuses is named as the
server (its address, user, password, database), never as the workspace's file permissions;
a catalog URL is shown as the user wrote it, with only its password hidden."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from store import CatalogUnusable, Store, StoreError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("url, shown", [
    ("postgresql+psycopg://icl:s3cret@db.example:5432/icl",
     "postgresql+psycopg://icl:***@db.example:5432/icl"),
    ("postgresql+psycopg://icl@/t1?host=/tmp/a b&port=5",
     "postgresql+psycopg://icl@/t1?host=/tmp/a b&port=5"),
    ("postgres://u:p@ss@host/db", "postgres://u:***@host/db"),
    ("garbage", "garbage"),
    ("sqlite:////tmp/a%3Fb/catalog.db", "sqlite:////tmp/a%3Fb/catalog.db"),
])
def test_a_url_is_shown_as_given_with_only_its_password_hidden(url, shown):
    from store.errors import display_url

    assert display_url(url) == shown


def _no_server_words(text: str) -> None:
    assert "permissions and free space" not in text and "s3cret" not in text


@pytest.mark.parametrize("what", ["database", "user"])
def test_a_server_that_refuses_is_named_as_the_server(pg_server, tmp_path, what):
    ws = tmp_path / "ws"
    Store.init(ws).close()  # a workspace (its own SQLite catalog), then pointed at a server
    good = pg_server.new_url()
    url = (good.replace("@/t", "@/nosuchdb") if what == "database"
           else good.replace("icl@", "nobody:s3cret@"))
    with pytest.raises(CatalogUnusable) as err:
        Store.open(ws, url)
    text = str(err.value)
    assert "the catalog's database server refused" in text and "ICL_CATALOG_URL" in text
    assert ("does not exist" in text) and "\n" not in text
    _no_server_words(text)


def test_a_sqlite_file_that_cannot_be_opened_still_speaks_of_the_file(tmp_path):
    ws = tmp_path / "ws"
    Store.init(ws).close()
    with pytest.raises(CatalogUnusable, match="permissions and free space"):
        Store.open(ws, f"sqlite:///{tmp_path}/no/such/folder/catalog.db")


def _status(ws: Path, url: str) -> subprocess.CompletedProcess:
    env = {"ICL_CATALOG_URL": url, "PATH": "/usr/bin:/bin", "HOME": str(ws.parent),
           "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.run([sys.executable, "-m", "icl_cli", "status", "-w", str(ws)],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("url, words", [
    ("postgres://u:s3cret@host/db", "the catalog URL 'postgres://u:***@host/db' needs the "
                                    "database driver"),
    ("postgresql+nosuchdriver://u:s3cret@/db", "the catalog URL "
                                               "'postgresql+nosuchdriver://u:***@/db' needs"),
    ("postgresql+psycopg://u:s3cret@host:notaport/db",
     "the catalog URL 'postgresql+psycopg://u:***@host:notaport/db' (ICL_CATALOG_URL) is "
     "not a database URL"),
    ("garbage", "the catalog URL 'garbage' (ICL_CATALOG_URL) is not a database URL"),
], ids=["postgres scheme", "no driver", "bad port", "garbage"])
def test_a_mangled_catalog_url_is_shown_as_given(tmp_path, url, words):
    ws = tmp_path / "ws"
    Store.init(ws).close()
    done = _status(ws, url)
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], lines
    _no_server_words(lines[0])


def test_a_bad_url_given_to_the_store_is_one_store_error(tmp_path):
    ws = tmp_path / "ws"
    Store.init(ws).close()
    with pytest.raises(StoreError, match=r"'postgresql\+psycopg://u:\*\*\*@h:x/db'"):
        Store.open(ws, "postgresql+psycopg://u:pw@h:x/db")
