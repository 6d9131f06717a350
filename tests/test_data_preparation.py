"""What the real-task families share (`seqjax.data.preparation`): compressed raw files, config checks, and
the cross-process preparation lock, down to two real processes preparing one data set at once."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import lzma
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from seqjax.data import genomic, preparation
from tests.train_subprocess import refusal_line

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("plain.txt", lambda b: b),
        ("x.gz", gzip.compress),
        ("x.xz", lzma.compress),
        ("x.bz2", bz2.compress),
        ("no_suffix", lzma.compress),  # recognised by the magic bytes, not the name
    ],
)
def test_read_compressed_reads_every_format(tmp_path: pathlib.Path, name: str, compress) -> None:
    content = b"BZh is plain text here\n" * 100
    path = tmp_path / name
    path.write_bytes(compress(content))
    assert preparation.read_compressed(path) == content
    with preparation.open_compressed(path) as f:
        assert f.read() == content


@pytest.mark.parametrize(
    ("suffix", "compress"), [("gz", gzip.compress), ("xz", lzma.compress), ("bz2", bz2.compress)]
)
def test_truncated_archive_names_the_file_and_the_fix(tmp_path: pathlib.Path, suffix: str, compress) -> None:
    whole = compress(os.urandom(20_000))
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(whole[: len(whole) // 2])
    match = rf"cut\.{suffix}: truncated or corrupt \.{suffix} file .*delete it and fetch it again"
    with pytest.raises(ValueError, match=match):
        preparation.read_compressed(path)
    with pytest.raises(ValueError, match=match), preparation.open_compressed(path) as f:
        f.read()


def test_config_checks_name_the_family_key_and_fix() -> None:
    defaults = {"kind": "genomic", "task": "promoter", "length": 16, "fractions": (0.8, 0.1, 0.1)}
    with pytest.raises(ValueError, match=r"genomic data config: unknown keys \['lenght'\]; known keys are"):
        preparation.resolve_config({"lenght": 3}, defaults, "genomic")
    with pytest.raises(ValueError, match=r"genomic data config: kind must be 'genomic'"):
        preparation.resolve_config({"kind": "documents"}, defaults, "genomic")
    config = preparation.resolve_config({"length": np.int64(8)}, defaults, "genomic")
    preparation.check_int(config, "length", "genomic")
    assert config["length"] == 8 and type(config["length"]) is int
    with pytest.raises(
        ValueError, match=r"task must be one of \('promoter', 'species'\).*did you mean 'species'"
    ):
        preparation.check_choice({"task": "specie"}, "task", ("promoter", "species"), "genomic")
    with pytest.raises(ValueError, match=r"length must be a positive int, got True"):
        preparation.check_int({"length": True}, "length", "genomic")
    with pytest.raises(ValueError, match=r"bpe_vocab_size must be an int >= 256, got 100"):
        preparation.check_int({"bpe_vocab_size": 100}, "bpe_vocab_size", "documents", minimum=256)
    with pytest.raises(ValueError, match=r"fractions must be 3 positive numbers"):
        preparation.check_fractions({"fractions": (0.5, 0.5)}, "fractions", "genomic")
    assert preparation.route_dir("/d", "sample") == pathlib.Path("/d/sample")
    assert (
        preparation.route_dir("/d", "auto")
        == preparation.route_dir("/d", "offline")
        == pathlib.Path("/d/full")
    )


def test_lock_waits_for_the_holder_and_says_so(tmp_path: pathlib.Path, caplog) -> None:
    lock = tmp_path / "data" / ".set.lock"
    order = []
    with preparation.preparation_lock(lock):

        def second() -> None:
            with preparation.preparation_lock(lock):  # a new open file description: flock blocks
                order.append("second")

        thread = threading.Thread(target=second)
        with caplog.at_level(logging.INFO, logger="seqjax.data.preparation"):
            thread.start()
            time.sleep(0.3)
            order.append("first")
    thread.join(timeout=10)
    assert order == ["first", "second"]
    assert f"Waiting for another process preparing the same data set (lock {lock})" in caplog.text


# A trainer process: waits at a barrier so both prepare at the same moment, counts the builds it runs,
# then reads every split back and prints a digest of it.
_PREPARE = """
import hashlib, json, os, pathlib, sys, time
from seqjax.data import genomic
from seqjax.data.genomic import builder

data_dir, counter, barrier, me = sys.argv[1:]
generate = builder.GenomicWindows._split_generators


def counted(self, dl_manager):
    with open(counter, "a") as f:
        f.write(f"{os.getpid()}\\n")
    return generate(self, dl_manager)


builder.GenomicWindows._split_generators = counted
pathlib.Path(barrier, me).touch()
while len(os.listdir(barrier)) < 2:
    time.sleep(0.01)
splits = genomic.make_sources({"task": "species", "length": 4096}, data_dir)
digests = {}
for name, split in splits.items():
    h = hashlib.sha256()
    for i in range(len(split)):
        h.update(split[i]["inputs"].tobytes() + split[i]["label"].tobytes())
    digests[name] = [len(split), h.hexdigest()]
print(json.dumps(digests))
"""


def _digests(splits: dict) -> dict:
    digests = {}
    for name, split in splits.items():
        h = hashlib.sha256()
        for i in range(len(split)):
            h.update(split[i]["inputs"].tobytes() + split[i]["label"].tobytes())
        digests[name] = [len(split), h.hexdigest()]
    return digests


def test_two_processes_prepare_one_data_set_once(tmp_path: pathlib.Path) -> None:
    data_dir, counter, barrier = tmp_path / "datasets", tmp_path / "builds.txt", tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _PREPARE, str(data_dir), str(counter), str(barrier), str(k)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for k in range(2)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len(counter.read_text().split()) == 1  # one process built, the other found it ready
    assert results[0] == results[1]
    # What both read is what a fresh reader of the prepared data set reads, and the sample's species
    # task at 4096 bp (232 / 72 / 72 windows, docs/data.md).
    assert _digests(genomic.make_sources({"task": "species", "length": 4096}, str(data_dir))) == results[0]
    assert [results[0][s][0] for s in genomic.SPLITS] == [232, 72, 72]
    assert len(counter.read_text().split()) == 1


def test_the_script_checks_every_data_sets_options_before_preparing_any(tmp_path):
    """scripts/prepare_data.py with a misspelled task (after a good one): one line naming the option, the
    choices and the closest one, exit status 2, and nothing prepared, not even the good one."""
    line = refusal_line(
        "scripts/prepare_data.py",
        "--kinds=timeseries,genomic",
        "--timeseries_datasets=household_power",
        "--genomic_tasks=species,genic_vs_intergenicc",
        "--route=sample",
        f"--data_dir={tmp_path / 'data'}",
    )
    assert line.startswith("scripts/prepare_data.py: genomic data config: task must be one of (")
    assert "(did you mean 'genic_vs_intergenic'?)" in line
    assert not (tmp_path / "data").exists()
