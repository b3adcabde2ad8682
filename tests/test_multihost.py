"""Two processes of 4 CPU devices each (jax.distributed on loopback, gloo collectives) train the
smoke config across 8 global devices; only process 0 writes; and a single process resuming their
checkpoint ends with every number of one 8-device process trained throughout; and a checkpoint of
8 devices resumes on 1."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ~4 min on 2 cores (processes that each compile the training): `make test-slow`.
pytestmark = [pytest.mark.slow, pytest.mark.real_data, pytest.mark.usefixtures("real_mnist")]
# 8 divides the batch and the evaluation chunk, so a run uses all 8 devices unless told fewer.
FLAGS = [
    "--config=experiments/configs/smoke.py",
    "--betas=1e-3,1e-1",
    "--num_epochs=2",
    "--num_devices=8",
    "--config.batch_size=80",
    "--config.eval_chunk_size=400",
    "--config.train_subset=800",
    "--config.test_subset=400",
    "--config.train_eval_size=400",
    "--config.checkpoint_every_epochs=1",
    "--config.progress=False",
]


def environment(devices):
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )


def entrypoint(*flags):
    return [sys.executable, "-m", "experiments.sweep_beta", *FLAGS, *flags]


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_two_processes(workdir, *flags, timeout=400):
    """Runs both processes of a 2 x 4-device run; kills both if either fails or takes too long."""
    address = f"127.0.0.1:{free_port()}"
    processes = [
        subprocess.Popen(
            entrypoint(
                f"--workdir={workdir}",
                "--distributed",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={index}",
                *flags,
            ),
            cwd=REPO,
            env=environment(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in (0, 1)
    ]
    try:
        outputs = [process.communicate(timeout=timeout) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return [stdout for stdout, _ in outputs]


def run_one_process(*flags):
    """One process with 8 devices; fails the test if it fails."""
    result = subprocess.run(
        entrypoint(*flags),
        cwd=REPO,
        env=environment(8),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_rows(workdir):
    with open(os.path.join(workdir, "results.csv")) as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def read_records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as handle:
        return [json.loads(line) for line in handle]


def assert_same_numbers(ours, theirs):
    """Rows of metrics equal to float tolerance, wall-clock times aside."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert set(a) == set(b)
        for key in a:
            if "seconds" not in key:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_two_processes_equal_one_and_resume_in_one(tmp_path):
    """Epochs 1-2 in two processes, then epoch 3 resumed in one, give every epoch's training and
    evaluation numbers of a single 8-device process run for 3 epochs."""
    two, one = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
    stdouts = run_two_processes(two)

    # Only process 0 writes: one table printed, each record once.
    assert "| seed | beta |" in stdouts[0] and "| seed | beta |" not in stdouts[1]
    records = read_records(two)
    assert [(r["epoch"], r["beta"]) for r in records] == [
        (1, 1e-3),
        (1, 1e-1),
        (2, 1e-3),
        (2, 1e-1),
    ]
    assert all("test/error_avg" in r for r in records)  # evaluated in both processes

    # A single process resumes the two-process run from its checkpoint of epoch 2; the same
    # global devices, reducing in the same order, give the numbers of one process throughout.
    resumed = run_one_process(f"--workdir={two}", "--num_epochs=3")
    assert "Resuming from the checkpoint of epoch 2" in resumed.stderr
    run_one_process(f"--workdir={one}", "--num_epochs=3")
    assert [r["epoch"] for r in read_records(two)] == [1, 1, 2, 2, 3, 3]
    assert_same_numbers(read_records(two), read_records(one))
    assert_same_numbers(read_rows(two), read_rows(one))


def test_a_mesh_of_fewer_devices_takes_an_equal_share_of_each_process(tmp_path):
    """4 of the 8 devices: 2 of each process (the first 4 would be process 0's alone, and process
    1, holding no shard, would hang the run). The numbers are those of one process of 4 devices."""
    two, one = str(tmp_path / "two_processes"), str(tmp_path / "one_process")
    run_two_processes(two, "--num_devices=4")
    run_one_process(f"--workdir={one}", "--num_devices=4")
    assert_same_numbers(read_records(two), read_records(one))
    assert_same_numbers(read_rows(two), read_rows(one))


def test_a_checkpoint_resumes_under_another_device_count(tmp_path):
    """Epochs 1-2 on 8 devices, then epoch 3 resumed on 1 (`num_devices` may change on resume):
    every number of an 8-device run trained throughout, to the rounding of the devices' sums.
    The checkpoint holds the replicated state; the resumed run places it on its own mesh."""
    moved, straight = str(tmp_path / "moved"), str(tmp_path / "straight")
    run_one_process(f"--workdir={moved}")
    resumed = run_one_process(f"--workdir={moved}", "--num_epochs=3", "--num_devices=1")
    assert "Resuming from the checkpoint of epoch 2" in resumed.stderr
    assert "on 1 device(s)" in resumed.stderr  # the resumed run took the new device count
    run_one_process(f"--workdir={straight}", "--num_epochs=3")
    assert [r["epoch"] for r in read_records(moved)] == [1, 1, 2, 2, 3, 3]
    assert_same_numbers(read_records(moved), read_records(straight))
    assert_same_numbers(read_rows(moved), read_rows(straight))
