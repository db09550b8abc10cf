"""Starting a run of several processes (lmseg/launch.py): detectron2's launcher with one command
per machine, torchrun, the refusal of both at once, and the CPUs shared by the processes of a
machine. The commands are those of GETTING_STARTED.md's "Several machines", run on localhost."""
import itertools
import json
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.engine import default_argument_parser

from lmseg.launch import LaunchError, check_launch_arguments, share_cpu_threads, torchrun_process

from tests.helpers.model_helpers import REPO, TINY_CONFIG
from tests.helpers.synthetic_datasets import write_learnable_folder_dataset

TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def _args(*argv):
    return default_argument_parser().parse_args(["--config-file", TINY_CONFIG, *argv])


# ---- torchrun's variables and the launcher's arguments

def test_torchrun_variables_give_this_process_its_place():
    assert torchrun_process({}) is None
    assert torchrun_process({**TORCHRUN_ENV, "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}) is None
    process = torchrun_process(TORCHRUN_ENV)
    assert (process.rank, process.world_size, process.local_rank, process.local_world_size) == (1, 4, 1, 2)
    # torchrun with --num-gpus 1 (the default) and the default --dist-url is a torchrun run
    assert check_launch_arguments(_args("--num-gpus", "1"), TORCHRUN_ENV) == process


@pytest.mark.parametrize("argv, named", [
    (["--num-gpus", "2"], "--num-gpus 2"),
    (["--num-machines", "2", "--machine-rank", "1"], "--num-machines 2 --machine-rank 1"),
    (["--dist-url", "tcp://10.0.0.1:1234"], "--dist-url tcp://10.0.0.1:1234"),
])
def test_torchrun_with_the_launchers_arguments_is_refused(argv, named):
    with pytest.raises(LaunchError, match=f"WORLD_SIZE=4, LOCAL_WORLD_SIZE=2.*{named} asks detectron2's launcher"
                                          ".*Use one or the other"):
        check_launch_arguments(_args(*argv), TORCHRUN_ENV)
    assert check_launch_arguments(_args(*argv), {}) is None  # without torchrun they are the launcher's


def test_incomplete_or_uneven_torchrun_variables_are_refused():
    with pytest.raises(LaunchError, match="WORLD_SIZE=2 makes this process one of 2, but RANK, "
                                          "LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT are not set"):
        torchrun_process({"WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    # a scheduler's WORLD_SIZE, RANK and MASTER_* without torchrun's own variables: detectron2's launcher
    kubeflow = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "node0", "MASTER_PORT": "23456"}
    assert torchrun_process(kubeflow) is None
    with pytest.raises(LaunchError, match="LOCAL_RANK, LOCAL_WORLD_SIZE are not set"):
        torchrun_process({**kubeflow, "TORCHELASTIC_RUN_ID": "job"})
    with pytest.raises(LaunchError, match="WORLD_SIZE=3 is not a multiple of LOCAL_WORLD_SIZE=2"):
        torchrun_process({**TORCHRUN_ENV, "WORLD_SIZE": "3"})
    with pytest.raises(LaunchError, match="RANK='x' is not a whole number"):
        torchrun_process({**TORCHRUN_ENV, "RANK": "x"})


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_the_processes_of_a_machine_share_its_cpus(restore_threads):
    line = share_cpu_threads(4, environ={}, cpus=8)
    assert torch.get_num_threads() == 2
    assert line == "4 processes on this machine share its 8 CPUs: torch uses 2 threads in each (OMP_NUM_THREADS sets another number)"
    share_cpu_threads(4, environ={}, cpus=3)
    assert torch.get_num_threads() == 1  # at least one thread each
    # OMP_NUM_THREADS wins, and a lone process is left as it is
    torch.set_num_threads(3)
    assert "OMP_NUM_THREADS=3: torch uses 3 threads in each of the 4" in share_cpu_threads(4, {"OMP_NUM_THREADS": "3"}, cpus=8)
    assert share_cpu_threads(1, environ={}, cpus=8) is None
    assert torch.get_num_threads() == 3


# ---- the commands, on localhost

# 3 iterations: a checkpoint after the second (model_0000001.pth), then model_final.pth
FEW_ITERATIONS = ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "2",
                  "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.CROP.SIZE", "(48, 48)"]


def documented_commands():
    """GETTING_STARTED.md's commands "On one host", each as (its environment variables, argv)."""
    text = (REPO / "GETTING_STARTED.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*On one host\*\*.*?```bash\n(.*?)```", text, flags=re.S).group(1)
    commands = []
    for line in block.splitlines():
        words = shlex.split(line.removesuffix("&"))
        env = dict(w.split("=", 1) for w in itertools.takewhile(lambda w: re.fullmatch(r"[A-Z_]+=\S*", w), words))
        commands.append((env, words[len(env):]))
    return commands


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_learnable_folder_dataset(str(tmp_path_factory.mktemp("launch") / "train"), num_images=4, size=48,
                                          num_classes=3, seed=0)


def _start(command, data, out_dir, port=None, **env):
    """Start a documented command on the tiny folder dataset, for a few iterations into out_dir."""
    variables, argv = command
    program = {"python": [sys.executable], "torchrun": [sys.executable, "-m", "torch.distributed.run"]}[argv[0]]
    argv = [word.replace("sem_seg_folder:PATH", f"sem_seg_folder:{data}") for word in argv[1:]]
    if port is not None:
        argv = [word.replace("tcp://127.0.0.1:29500", f"tcp://127.0.0.1:{port}") for word in argv]
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", *TORCHRUN_ENV)}
    environ.update(PYTHONWARNINGS="ignore", **variables, **env)
    return subprocess.Popen([*program, *argv, *FEW_ITERATIONS, "OUTPUT_DIR", str(out_dir)], cwd=REPO, env=environ,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(*procs, timeout=300):
    """Wait for every process; each must exit 0."""
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-5000:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_one_run_of_two(rank0_dir: Path, rank1_dir: Path) -> None:
    """One training of world size 2: rank 0 wrote the checkpoints and metrics, once; rank 1 its log."""
    assert "Rank of current process: 0. World size: 2" in (rank0_dir / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (rank1_dir / "log.txt.rank1").read_text()
    assert sorted(p.name for p in rank0_dir.glob("*.pth")) == ["model_0000001.pth", "model_final.pth"]
    assert (rank0_dir / "last_checkpoint").read_text() == "model_final.pth"
    assert torch.load(rank0_dir / "model_final.pth", map_location="cpu", weights_only=True)["iteration"] == 2
    # two trainings into one OUTPUT_DIR would each append iterations 0 to 2
    iterations = [json.loads(line)["iteration"] for line in (rank0_dir / "metrics.json").read_text().splitlines()]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 2


def test_the_documented_commands_are_two_machines_then_torchrun():
    commands = documented_commands()
    assert [argv[0] for _, argv in commands] == ["python", "python", "torchrun"]
    for rank, (env, argv) in enumerate(commands[:2]):
        assert env == {"OMP_NUM_THREADS": "1"}
        assert argv[argv.index("--machine-rank") + 1] == str(rank) and "--num-machines" in argv


@pytest.mark.slow
def test_one_command_per_machine_forms_one_run(data, tmp_path):
    port = _free_port()
    # each "machine" has its own OUTPUT_DIR, as on machines without a shared disk
    _finish(*[_start(command, data, tmp_path / f"machine{rank}", port)
              for rank, command in enumerate(documented_commands()[:2])])
    _assert_one_run_of_two(tmp_path / "machine0", tmp_path / "machine1")
    # the second machine's process writes its log and nothing else
    assert sorted(p.name for p in (tmp_path / "machine1").iterdir()) == ["log.txt.rank1"]


@pytest.mark.slow
def test_torchrun_forms_one_run(data, tmp_path):
    # OMP_NUM_THREADS as a user sets it (torchrun would set 1 itself): it wins over the share of the CPUs
    _finish(_start(documented_commands()[2], data, tmp_path, OMP_NUM_THREADS="1"))
    _assert_one_run_of_two(tmp_path, tmp_path)
    for log in ("log.txt", "log.txt.rank1"):
        assert "OMP_NUM_THREADS=1: torch uses 1 thread in each of the 2 processes" in (tmp_path / log).read_text()


@pytest.mark.slow
def test_processes_started_by_num_gpus_share_the_cpus(data, tmp_path):
    command = ({}, ["python", "train_net.py", "--config-file", "configs/tiny.yaml", "--num-gpus", "2",
                    "DATASETS.TRAIN", '("sem_seg_folder:PATH",)', "DATASETS.TEST", "()"])
    _finish(_start(command, data, tmp_path))
    cpus = len(os.sched_getaffinity(0))
    line = f"2 processes on this machine share its {cpus} CPUs: torch uses {max(1, cpus // 2)} thread"
    for log in ("log.txt", "log.txt.rank1"):
        assert line in (tmp_path / log).read_text()


@pytest.mark.slow
def test_evaluate_all_under_torchrun_forms_one_run(tmp_path):
    # no benchmark on disk: every one is skipped, and the two processes still form one run
    (tmp_path / "datasets").mkdir()
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path / "datasets"), "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(REPO)}  # tools/ scripts import this checkout's lmseg, not an installed one
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "tools/evaluate_all.py",
         "--config-file", TINY_CONFIG, "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Rank of current process: 1. World size: 2" in (tmp_path / "out" / "log.txt.rank1").read_text()
    assert "Skipped (not on disk)" in (tmp_path / "out" / "benchmarks.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_net.py", "tools/evaluate_all.py"])
def test_torchrun_with_num_gpus_is_refused_before_anything_starts(script, tmp_path):
    proc = subprocess.run(
        [sys.executable, script, "--config-file", TINY_CONFIG, "--num-gpus", "2", "OUTPUT_DIR", str(tmp_path)],
        cwd=REPO, env={**os.environ, **TORCHRUN_ENV, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{os.path.basename(script)}: error: torchrun's variables" in proc.stderr
    assert f"Use one or the other: torchrun --nnodes M --nproc_per_node N {script} ..." in proc.stderr
    assert not any(tmp_path.iterdir())
