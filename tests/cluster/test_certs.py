"""``python -m pipeline.cluster.certs``: keys are never replaced silently, and its default folder stays out of git."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.cluster.certs import FILE_NAMES, main


def test_a_second_run_refuses_to_replace_the_ca_and_force_replaces_it(tmp_path, capsys):
    folder = tmp_path / "certs"
    main([str(folder)])
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILE_NAMES)
    first = {name: (folder / name).read_bytes() for name in FILE_NAMES}
    capsys.readouterr()

    (folder / "ca-key.pem").chmod(0o644)
    with pytest.raises(SystemExit) as refused:
        main([str(folder), "--host", "10.0.0.5"])
    assert refused.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {folder / 'ca.pem'} exists: a new CA would break the cluster that trusts it (--force replaces it)"
    ]
    assert {name: (folder / name).read_bytes() for name in FILE_NAMES} == first

    main([str(folder), "--force"])
    assert all((folder / name).read_bytes() != first[name] for name in FILE_NAMES)
    assert (folder / "ca-key.pem").stat().st_mode & 0o777 == 0o600
    assert (folder / "key.pem").stat().st_mode & 0o777 == 0o600


def test_one_existing_key_is_enough_to_refuse(tmp_path, capsys):
    (tmp_path / "key.pem").write_text("someone's key")
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert f"error: {tmp_path / 'key.pem'} exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_the_default_folder_is_ignored_by_git():
    ignored = subprocess.run(["git", "check-ignore", "-q", "certs/ca-key.pem"], capture_output=True, cwd=Path(__file__).parents[2])
    assert ignored.returncode == 0
