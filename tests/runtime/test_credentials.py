"""CredentialStore against its contract: encryption at rest, key handling, rotation, recovery, concurrency."""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from spinup.runtime.credentials import (
    MIN_SECRET_LENGTH,
    CredentialKeyError,
    CredentialStore,
    SecretInfo,
    SecretNotFound,
    validate_secret_name,
)
from spinup.runtime.errors import InvalidInput, NotFound, SpinupError

SECRET = "s3cr3t-Value_with+symbols/="
OTHER_SECRET = "a-different-secret-value"


def _paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "home" / "credentials.json", tmp_path / "home" / "master.key"


def _store(tmp_path: Path, env_key: str | None = None) -> CredentialStore:
    path, key_path = _paths(tmp_path)
    return CredentialStore(path, key_path, env_key)


def _new_key_text() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _document(tmp_path: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(_paths(tmp_path)[0].read_text())
    return loaded


def _ciphertexts(tmp_path: Path) -> dict[str, str]:
    secrets = _document(tmp_path)["secrets"]
    assert isinstance(secrets, dict)
    return {name: entry["ciphertext"] for name, entry in secrets.items()}


def _value_forms(value: str) -> list[bytes]:
    raw = value.encode()
    return [raw, base64.b64encode(raw), base64.urlsafe_b64encode(raw), base64.b64encode(raw).rstrip(b"=")]


# round trip and at-rest properties


def test_set_get_list_remove_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert store.list() == [] and not store.exists("TOKEN")
    info = store.set("TOKEN", SECRET)
    store.set("ALPHA", OTHER_SECRET)
    assert isinstance(info, SecretInfo) and info.name == "TOKEN"
    assert store.get("TOKEN") == SECRET and store.get("ALPHA") == OTHER_SECRET
    assert store.exists("TOKEN")
    listed = store.list()
    assert [i.name for i in listed] == ["ALPHA", "TOKEN"]  # sorted by name
    assert listed[1] == info
    removed = store.remove("TOKEN")
    assert removed.name == "TOKEN" and removed.fingerprint == info.fingerprint
    assert not store.exists("TOKEN") and [i.name for i in store.list()] == ["ALPHA"]
    with pytest.raises(SecretNotFound, match=r"No credential named 'TOKEN'\. List them with: spinup secret list"):
        store.get("TOKEN")
    with pytest.raises(SecretNotFound):
        store.remove("TOKEN")
    assert issubclass(SecretNotFound, NotFound)


def test_overwrite_keeps_created_at_and_changes_fingerprint(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first = store.set("TOKEN", SECRET)
    second = store.set("TOKEN", OTHER_SECRET)
    assert store.get("TOKEN") == OTHER_SECRET
    assert second.created_at == first.created_at and second.updated_at >= first.updated_at
    assert second.fingerprint != first.fingerprint
    assert first.created_at.endswith("+00:00") or first.created_at.endswith("Z")


def test_files_hold_no_plaintext_and_are_private(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", SECRET)
    store.set("OTHER", OTHER_SECRET)
    path, key_path = _paths(tmp_path)
    for file in (path, key_path):
        data = file.read_bytes()
        for value in (SECRET, OTHER_SECRET):
            for form in _value_forms(value):
                assert form not in data, f"{file.name} holds a form of a secret value"
        assert file.stat().st_mode & 0o777 == 0o600
    assert path.with_suffix(".lock").stat().st_mode & 0o777 == 0o600
    # The key file is base64url of 32 bytes and a newline.
    key_text = key_path.read_text()
    assert key_text.endswith("\n") and len(base64.urlsafe_b64decode(key_text.strip())) == 32
    document = _document(tmp_path)
    assert document["version"] == 1 and re.fullmatch(r"[0-9a-f]{16}", str(document["key_id"]))
    secrets = document["secrets"]
    assert isinstance(secrets, dict)
    entry = secrets["TOKEN"]
    assert set(entry) >= {"nonce", "ciphertext", "fingerprint", "created_at", "updated_at"}
    assert len(base64.b64decode(entry["nonce"])) == 12
    assert entry["nonce"] != secrets["OTHER"]["nonce"]


def test_fingerprint_is_keyed_not_a_plain_hash(tmp_path: Path) -> None:
    info = _store(tmp_path / "one").set("TOKEN", SECRET)
    assert re.fullmatch(r"[0-9a-f]{8}", info.fingerprint)
    for digest in (hashlib.sha256, hashlib.sha1, hashlib.md5):
        assert not digest(SECRET.encode()).hexdigest().startswith(info.fingerprint)
    # The same value under another key has (almost surely) another fingerprint.
    other = _store(tmp_path / "two").set("TOKEN", SECRET)
    assert other.fingerprint != info.fingerprint


def test_nothing_reveals_a_value(tmp_path: Path) -> None:
    store = _store(tmp_path)
    info = store.set("TOKEN", SECRET)
    assert not hasattr(info, "value")
    for text in (repr(store), str(store), repr(info), repr(store.list())):
        assert SECRET not in text
    assert str(_paths(tmp_path)[0]) in repr(store)


def test_reading_with_no_store_makes_no_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    path, key_path = _paths(tmp_path)
    assert store.key_source == "none"
    assert store.values() == {} and store.values(["TOKEN"]) == {}
    assert store.list() == [] and not store.exists("TOKEN")
    with pytest.raises(SecretNotFound):
        store.get("TOKEN")
    assert not key_path.exists() and not path.exists()
    assert store.key_source == "none"
    store.set("TOKEN", SECRET)
    assert store.key_source == "file" and key_path.exists()


def test_values_all_or_named(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("ONE", SECRET)
    store.set("TWO", OTHER_SECRET)
    assert store.values() == {"ONE": SECRET, "TWO": OTHER_SECRET}
    assert store.values(["TWO", "MISSING"]) == {"TWO": OTHER_SECRET}
    assert store.values([]) == {}


def test_list_needs_no_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    info = store.set("TOKEN", SECRET)
    _paths(tmp_path)[1].unlink()
    assert store.list() == [info] and store.exists("TOKEN")


# keys


def test_env_key_is_used_and_no_key_file_is_written(tmp_path: Path) -> None:
    key = os.urandom(32)
    store = _store(tmp_path, base64.urlsafe_b64encode(key).decode())
    assert store.key_source == "env"
    store.set("TOKEN", SECRET)
    assert not _paths(tmp_path)[1].exists()
    # Standard, URL-safe, padded or not: all the same key.
    for text in (
        base64.b64encode(key).decode(),
        base64.b64encode(key).decode().rstrip("="),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
    ):
        assert _store(tmp_path, text).get("TOKEN") == SECRET


def test_env_key_takes_precedence_over_key_file(tmp_path: Path) -> None:
    _store(tmp_path).set("TOKEN", SECRET)  # writes a key file
    with pytest.raises(CredentialKeyError, match="does not open"):
        _store(tmp_path, _new_key_text()).get("TOKEN")


def test_wrong_env_key_fails_and_changes_nothing(tmp_path: Path) -> None:
    right = _new_key_text()
    _store(tmp_path, right).set("TOKEN", SECRET)
    path, key_path = _paths(tmp_path)
    before = path.read_bytes()
    wrong = _store(tmp_path, _new_key_text())
    attempts: dict[str, Callable[[], object]] = {
        "get": lambda: wrong.get("TOKEN"),
        "values": lambda: wrong.values(),
        "set-existing": lambda: wrong.set("TOKEN", OTHER_SECRET),
        "set-new": lambda: wrong.set("NEW", OTHER_SECRET),
        "remove": lambda: wrong.remove("TOKEN"),
        "rotate": lambda: wrong.rotate_key(os.urandom(32)),
    }
    for label, attempt in attempts.items():
        with pytest.raises(CredentialKeyError) as failure:
            attempt()
        message = str(failure.value)
        assert "does not open the credential store" in message and "key id mismatch" in message, label
        assert str(path) in message and "SPINUP_MASTER_KEY" in message, label
        assert SECRET not in message and OTHER_SECRET not in message, label
    assert path.read_bytes() == before
    assert not key_path.exists()
    assert _store(tmp_path, right).get("TOKEN") == SECRET


def test_wrong_key_file_fails_and_changes_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", SECRET)
    path, key_path = _paths(tmp_path)
    right = key_path.read_bytes()
    key_path.write_text(_new_key_text() + "\n")
    before = path.read_bytes()
    wrong_key = key_path.read_bytes()
    for attempt in (lambda: store.set("NEW", OTHER_SECRET), lambda: store.remove("TOKEN"), store.rotate_key):
        with pytest.raises(CredentialKeyError, match=re.escape(str(key_path))):
            attempt()
    assert path.read_bytes() == before and key_path.read_bytes() == wrong_key
    key_path.write_bytes(right)
    assert store.get("TOKEN") == SECRET


@pytest.mark.parametrize(
    "bad",
    ["not-a-key-at-all", base64.b64encode(os.urandom(16)).decode(), base64.b64encode(os.urandom(33)).decode(), "!!"],
)
def test_malformed_env_key_is_refused_without_echoing_it(tmp_path: Path, bad: str) -> None:
    store = _store(tmp_path, bad)
    with pytest.raises(CredentialKeyError, match="must be base64 of 32 bytes") as refused:
        store.set("TOKEN", SECRET)
    assert bad not in str(refused.value) and bad not in repr(refused.value)
    assert "SPINUP_MASTER_KEY" in str(refused.value) and "urlsafe_b64encode" in str(refused.value)
    assert not _paths(tmp_path)[0].exists() and not _paths(tmp_path)[1].exists()


def test_malformed_key_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", SECRET)
    key_path = _paths(tmp_path)[1]
    key_path.write_text("garbage-key-text\n")
    with pytest.raises(CredentialKeyError) as refused:
        store.get("TOKEN")
    assert "garbage-key-text" not in str(refused.value)


def test_missing_key_file_with_a_store_is_an_error_and_makes_no_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", SECRET)
    path, key_path = _paths(tmp_path)
    key_path.unlink()
    before = path.read_bytes()
    assert store.key_source == "none"
    for attempt in (lambda: store.get("TOKEN"), lambda: store.set("NEW", OTHER_SECRET), store.values):
        with pytest.raises(CredentialKeyError, match="missing"):
            attempt()
    assert not key_path.exists() and path.read_bytes() == before


# rotation


def test_rotate_key_re_encrypts_in_place(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("ONE", SECRET)
    store.set("TWO", OTHER_SECRET)
    path, key_path = _paths(tmp_path)
    old_key = key_path.read_text().strip()
    old_ciphertexts = _ciphertexts(tmp_path)
    old_fingerprints = {i.name: i.fingerprint for i in store.list()}
    store.rotate_key()
    assert store.values() == {"ONE": SECRET, "TWO": OTHER_SECRET}
    assert _store(tmp_path).values() == {"ONE": SECRET, "TWO": OTHER_SECRET}
    assert key_path.read_text().strip() != old_key and key_path.stat().st_mode & 0o777 == 0o600
    new_ciphertexts = _ciphertexts(tmp_path)
    assert all(new_ciphertexts[name] != old_ciphertexts[name] for name in old_ciphertexts)
    assert {i.name: i.fingerprint for i in store.list()} != old_fingerprints
    assert not key_path.with_suffix(".key.new").exists()
    with pytest.raises(CredentialKeyError, match="does not open"):
        _store(tmp_path, old_key).get("ONE")
    for form in _value_forms(SECRET):
        assert form not in path.read_bytes()


def test_rotate_key_with_a_given_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", SECRET)
    new_key = os.urandom(32)
    store.rotate_key(new_key)
    assert base64.urlsafe_b64decode(_paths(tmp_path)[1].read_text().strip()) == new_key
    assert _store(tmp_path, base64.b64encode(new_key).decode()).get("TOKEN") == SECRET


def test_rotating_an_env_key_without_a_new_key_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path, _new_key_text())
    store.set("TOKEN", SECRET)
    before = _paths(tmp_path)[0].read_bytes()
    with pytest.raises(CredentialKeyError, match="SPINUP_MASTER_KEY"):
        store.rotate_key()
    assert _paths(tmp_path)[0].read_bytes() == before


def test_rotating_an_env_key_with_a_new_key_rewrites_only_the_store(tmp_path: Path) -> None:
    store = _store(tmp_path, _new_key_text())
    store.set("TOKEN", SECRET)
    new_key = os.urandom(32)
    store.rotate_key(new_key)
    assert not _paths(tmp_path)[1].exists()
    assert _store(tmp_path, base64.urlsafe_b64encode(new_key).decode()).get("TOKEN") == SECRET
    assert store.get("TOKEN") == SECRET  # the same object follows its own rotation


def test_recovery_after_a_crash_between_store_rewrite_and_key_rename(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", SECRET)
    store.set("OTHER", OTHER_SECRET)
    key_path = _paths(tmp_path)[1]
    old_key_text = key_path.read_text()
    new_key = os.urandom(32)
    # Replay the rotation up to the crash: key.new written, store rewritten under the new key, no rename.
    pending = key_path.with_suffix(".key.new")
    pending.write_text(base64.urlsafe_b64encode(new_key).decode() + "\n")
    pending.chmod(0o600)
    _store(tmp_path, old_key_text.strip()).rotate_key(new_key)  # rewrites the store only
    assert key_path.read_text() == old_key_text and pending.exists()
    reopened = _store(tmp_path)
    assert reopened.values() == {"TOKEN": SECRET, "OTHER": OTHER_SECRET}
    assert base64.urlsafe_b64decode(key_path.read_text().strip()) == new_key
    assert not pending.exists()
    reopened.set("THIRD", "third-secret")
    assert _store(tmp_path).get("THIRD") == "third-secret"


def test_a_crash_before_the_store_was_rewritten_keeps_the_old_key(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", SECRET)
    key_path = _paths(tmp_path)[1]
    old_key_text = key_path.read_text()
    key_path.with_suffix(".key.new").write_text(_new_key_text() + "\n")  # key.new written, nothing else
    assert _store(tmp_path).get("TOKEN") == SECRET
    assert key_path.read_text() == old_key_text
    store.rotate_key()  # a later rotation still works
    assert _store(tmp_path).get("TOKEN") == SECRET


# tampering and damage


def test_a_ciphertext_moved_to_another_name_does_not_decrypt(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("ONE", SECRET)
    store.set("TWO", OTHER_SECRET)
    path = _paths(tmp_path)[0]
    document = json.loads(path.read_text())
    for field in ("nonce", "ciphertext"):
        document["secrets"]["TWO"][field] = document["secrets"]["ONE"][field]
    path.write_text(json.dumps(document))
    with pytest.raises(SpinupError) as failure:
        store.get("TWO")
    assert SECRET not in str(failure.value) and OTHER_SECRET not in str(failure.value)
    assert store.get("ONE") == SECRET


def test_a_damaged_store_is_named_and_left_alone(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", SECRET)
    path = _paths(tmp_path)[0]
    for damage in (b"{ not json", b"[1, 2]", b"\xff\xfe\x00", b'{"version": 1}'):
        path.write_bytes(damage)
        for attempt in (store.list, lambda: store.get("TOKEN"), lambda: store.set("NEW", OTHER_SECRET)):
            with pytest.raises(SpinupError, match=re.escape(str(path))):
                attempt()
        assert path.read_bytes() == damage


# validation


@pytest.mark.parametrize("name", ["GITHUB_TOKEN", "_x", "a", "A" * 128, "k9_Z"])
def test_valid_names(name: str) -> None:
    assert validate_secret_name(name) == name


@pytest.mark.parametrize("name", ["", "9LIVES", "bad-name", "has space", "A" * 129, "dot.ted", "é", "X\n"])
def test_invalid_names_are_refused_with_an_example(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidInput, match="GITHUB_TOKEN"):
        validate_secret_name(name)
    with pytest.raises(InvalidInput):
        _store(tmp_path).set(name, SECRET)
    assert not _paths(tmp_path)[0].exists()


@pytest.mark.parametrize("value", ["", "abc", "a\0bcdef"])
def test_bad_values_are_refused_without_echoing_them(tmp_path: Path, value: str) -> None:
    assert len("abc") < MIN_SECRET_LENGTH
    with pytest.raises(InvalidInput) as refused:
        _store(tmp_path).set("TOKEN", value)
    if value:
        assert value not in str(refused.value)
    assert not _paths(tmp_path)[0].exists() and not _paths(tmp_path)[1].exists()


def test_overwrite_false_refuses_an_existing_name(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.set("TOKEN", SECRET, overwrite=False)  # new name: fine
    before = _paths(tmp_path)[0].read_bytes()
    with pytest.raises(InvalidInput, match="already exists") as refused:
        store.set("TOKEN", OTHER_SECRET, overwrite=False)
    assert "spinup secret set TOKEN" in str(refused.value) and OTHER_SECRET not in str(refused.value)
    assert _paths(tmp_path)[0].read_bytes() == before and store.get("TOKEN") == SECRET


# sharing and concurrency


def test_two_store_objects_see_each_others_writes(tmp_path: Path) -> None:
    first, second = _store(tmp_path), _store(tmp_path)
    first.set("ONE", SECRET)
    assert second.get("ONE") == SECRET
    second.set("TWO", OTHER_SECRET)
    assert first.values() == {"ONE": SECRET, "TWO": OTHER_SECRET}
    first.remove("TWO")
    assert not second.exists("TWO")
    second.rotate_key()
    assert first.get("ONE") == SECRET


def test_concurrent_threads_lose_nothing(tmp_path: Path) -> None:
    _store(tmp_path).set("SEED", SECRET)
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        store = _store(tmp_path)
        try:
            for index in range(20):
                store.set(f"T{worker}_{index}", f"thread-value-{worker}-{index}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    values = _store(tmp_path).values()
    assert len(values) == 1 + 4 * 20
    assert values["T3_19"] == "thread-value-3-19"


def _process_writer(directory: str, worker: int) -> None:
    home = Path(directory) / "home"
    store = CredentialStore(home / "credentials.json", home / "master.key")
    for index in range(20):
        store.set(f"P{worker}_{index}", f"process-value-{worker}-{index}")


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    # No key yet: the first writers also race to create it, under the lock.
    workers = [context.Process(target=_process_writer, args=(str(tmp_path), n)) for n in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    values = _store(tmp_path).values()
    assert len(values) == 2 * 20
    assert values == {f"P{w}_{i}": f"process-value-{w}-{i}" for w in range(2) for i in range(20)}
