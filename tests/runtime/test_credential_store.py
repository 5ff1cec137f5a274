"""The encrypted credential store on real files: no plaintext, 0600, wrong keys, rotation, concurrency."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import threading
from pathlib import Path

import pytest

from spinup.runtime.credentials import CredentialKeyError, CredentialStore, SecretNotFound
from spinup.runtime.errors import InvalidInput, SpinupError

VALUE = "hunter2-but-longer/+="


def _store(tmp_path: Path, env_key: str | None = None) -> CredentialStore:
    return CredentialStore(tmp_path / "credentials.json", tmp_path / "master.key", env_key)


def _key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def test_values_round_trip_and_never_sit_in_a_file_in_plaintext(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.values() == {} and not (tmp_path / "master.key").exists()  # reading makes no key
    info = store.set("TOKEN", VALUE)
    assert store.get("TOKEN") == VALUE and store.values() == {"TOKEN": VALUE}
    assert [i.name for i in store.list()] == ["TOKEN"] and store.list()[0].fingerprint == info.fingerprint
    for path in (tmp_path / "credentials.json", tmp_path / "master.key"):
        data = path.read_bytes()
        assert VALUE.encode() not in data and base64.b64encode(VALUE.encode()) not in data
        assert path.stat().st_mode & 0o777 == 0o600
    assert VALUE not in repr(store) and VALUE not in repr(info)
    store.set("TOKEN", "another-value")
    assert store.get("TOKEN") == "another-value" and store.list()[0].fingerprint != info.fingerprint
    store.remove("TOKEN")
    with pytest.raises(SecretNotFound):
        store.get("TOKEN")


def test_a_wrong_key_is_named_and_nothing_is_overwritten(tmp_path: Path) -> None:
    right = _key()
    _store(tmp_path, right).set("TOKEN", VALUE)
    before = (tmp_path / "credentials.json").read_bytes()
    wrong = _store(tmp_path, _key())
    for attempt in (
        lambda: wrong.get("TOKEN"),
        lambda: wrong.set("TOKEN", "x-replacement"),
        lambda: wrong.set("OTHER", "x-other-value"),
        lambda: wrong.remove("TOKEN"),
        lambda: wrong.rotate_key(os.urandom(32)),
    ):
        with pytest.raises(CredentialKeyError, match="does not open"):
            attempt()
    assert (tmp_path / "credentials.json").read_bytes() == before
    assert _store(tmp_path, right).get("TOKEN") == VALUE


def test_a_malformed_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(CredentialKeyError, match="base64 of 32 bytes") as refused:
        _store(tmp_path, "not-a-key-at-all").set("TOKEN", VALUE)
    assert "not-a-key-at-all" not in str(refused.value)


def test_a_missing_key_file_is_an_error_and_no_new_key_is_made(tmp_path: Path) -> None:
    _store(tmp_path).set("TOKEN", VALUE)
    (tmp_path / "master.key").unlink()
    with pytest.raises(CredentialKeyError, match="missing"):
        _store(tmp_path).set("OTHER", "other-value")
    assert not (tmp_path / "master.key").exists()


def test_rotation_re_encrypts_in_place_and_survives_a_crash_midway(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", VALUE)
    old_key = (tmp_path / "master.key").read_text()
    old_document = json.loads((tmp_path / "credentials.json").read_text())
    store.rotate_key()
    assert (tmp_path / "master.key").read_text() != old_key
    assert _store(tmp_path).get("TOKEN") == VALUE
    new_document = json.loads((tmp_path / "credentials.json").read_text())
    assert new_document["secrets"]["TOKEN"]["ciphertext"] != old_document["secrets"]["TOKEN"]["ciphertext"]
    with pytest.raises(CredentialKeyError):
        _store(tmp_path, old_key.strip()).get("TOKEN")
    # A crash after the store was rewritten under a new key but before the key file was replaced.
    newer = os.urandom(32)
    current = (tmp_path / "master.key").read_text()
    store.rotate_key(newer)
    (tmp_path / "master.key.new").write_text(base64.urlsafe_b64encode(newer).decode())
    (tmp_path / "master.key").write_text(current)
    assert _store(tmp_path).get("TOKEN") == VALUE
    assert not (tmp_path / "master.key.new").exists()


def test_rotating_an_environment_key_needs_the_new_key(tmp_path: Path) -> None:
    store = _store(tmp_path, _key())
    store.set("TOKEN", VALUE)
    with pytest.raises(CredentialKeyError, match="SPINUP_MASTER_KEY"):
        store.rotate_key()
    new_key = os.urandom(32)
    store.rotate_key(new_key)
    assert _store(tmp_path, base64.b64encode(new_key).decode()).get("TOKEN") == VALUE
    assert not (tmp_path / "master.key").exists()


def test_a_ciphertext_moved_to_another_name_does_not_decrypt(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("ONE", VALUE)
    store.set("TWO", "second-value")
    document = json.loads((tmp_path / "credentials.json").read_text())
    document["secrets"]["TWO"].update({k: document["secrets"]["ONE"][k] for k in ("nonce", "ciphertext")})
    (tmp_path / "credentials.json").write_text(json.dumps(document))
    with pytest.raises(CredentialKeyError) as failure:
        store.get("TWO")
    assert VALUE not in str(failure.value)


def test_bad_names_values_and_overwrites_are_refused_clearly(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(InvalidInput, match="GITHUB_TOKEN"):
        store.set("bad-name", VALUE)
    with pytest.raises(InvalidInput) as short:
        store.set("PIN", "123")
    assert "123" not in str(short.value)
    store.set("TOKEN", VALUE)
    with pytest.raises(InvalidInput, match="already exists"):
        store.set("TOKEN", "other-value", overwrite=False)
    (tmp_path / "credentials.json").write_text("{ damaged")
    with pytest.raises(SpinupError, match="damaged"):
        store.list()


def _set_many(directory: str, worker: int) -> None:
    store = CredentialStore(Path(directory) / "credentials.json", Path(directory) / "master.key")
    for index in range(15):
        store.set(f"W{worker}_{index}", f"value-{worker}-{index}")


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    _store(tmp_path).set("FIRST", VALUE)  # the key exists before the writers race
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_set_many, args=(str(tmp_path), n)) for n in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert len(_store(tmp_path).values()) == 1 + 3 * 15


def test_an_emptied_store_whose_key_file_was_deleted_takes_a_new_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", VALUE)
    store.remove("TOKEN")
    (tmp_path / "master.key").unlink()
    store.set("TOKEN", "fresh-value")
    assert _store(tmp_path).get("TOKEN") == "fresh-value"


def test_reads_during_rotations_never_fail(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", VALUE)
    failures: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        reader = _store(tmp_path)
        while not stop.is_set():
            try:
                assert reader.values() == {"TOKEN": VALUE}
            except BaseException as exc:  # recorded and asserted on below
                failures.append(exc)
                return

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for _ in range(40):
            store.rotate_key()
    finally:
        stop.set()
        thread.join(30)
    assert failures == []
