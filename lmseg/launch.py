"""How the processes of a run start, and how they share a machine's CPUs.

Two ways start a run of several processes, and :func:`launch` takes either:

* detectron2's launcher: ``train_net.py --num-gpus N [--num-machines M --machine-rank R
  --dist-url tcp://HOST:PORT]``, one command per machine, each starting N processes;
* torchrun (or anything else that sets its variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``): each process it starts is already
  one of ``WORLD_SIZE`` and joins the process group from those variables.

Asking for both at once (torchrun's variables with ``--num-gpus 2``, say) is refused with
:class:`LaunchError`, since each of torchrun's processes would start a run of its own.

On the CPU, the processes of one machine divide its CPUs among them (:func:`share_cpu_threads`,
which :func:`lmseg.engine.setup` calls in each process) unless ``OMP_NUM_THREADS`` says otherwise.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch
import torch.distributed as dist
from detectron2.engine import default_argument_parser
from detectron2.engine import launch as detectron2_launch
from detectron2.engine.launch import DEFAULT_TIMEOUT
from detectron2.utils import comm

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class LaunchError(ValueError):
    """The command line and the environment ask for a run that cannot start as asked."""


@dataclass(frozen=True)
class TorchrunProcess:
    """This process's place in a run that torchrun started."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def torchrun_process(environ: Mapping[str, str] = os.environ) -> Optional[TorchrunProcess]:
    """This process's place in a torchrun run of several processes, read from torchrun's
    variables; None where ``WORLD_SIZE`` is unset or 1 (a run of one process needs no group), and
    where neither ``LOCAL_RANK`` nor torchrun's ``TORCHELASTIC_RUN_ID`` is set: cluster schedulers
    that export ``WORLD_SIZE``, ``RANK`` and ``MASTER_ADDR`` for a per-machine command (Kubeflow's
    PyTorchJob, for one) are left to detectron2's launcher and its command-line arguments."""
    if not environ.get("WORLD_SIZE"):
        return None
    world_size = _int_variable(environ, "WORLD_SIZE")
    if world_size <= 1 or not (environ.get("LOCAL_RANK") or environ.get("TORCHELASTIC_RUN_ID")):
        return None
    missing = [name for name in TORCHRUN_VARIABLES if not environ.get(name)]
    if missing:
        raise LaunchError(
            f"WORLD_SIZE={world_size} makes this process one of {world_size}, but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set. Start the processes with torchrun, which sets "
            f"all of {', '.join(TORCHRUN_VARIABLES)}, or unset WORLD_SIZE and start them with --num-gpus "
            "(and --num-machines, --machine-rank, --dist-url on several machines)."
        )
    process = TorchrunProcess(
        rank=_int_variable(environ, "RANK"),
        world_size=world_size,
        local_rank=_int_variable(environ, "LOCAL_RANK"),
        local_world_size=_int_variable(environ, "LOCAL_WORLD_SIZE"),
    )
    if process.local_world_size < 1 or world_size % process.local_world_size:
        raise LaunchError(
            f"WORLD_SIZE={world_size} is not a multiple of LOCAL_WORLD_SIZE={process.local_world_size}: "
            "every machine must run the same number of processes (the same torchrun --nproc_per_node on each)."
        )
    return process


def _int_variable(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise LaunchError(f"{name}={environ[name]!r} is not a whole number; torchrun sets it to one.") from None


def check_launch_arguments(args, environ: Mapping[str, str] = os.environ) -> Optional[TorchrunProcess]:
    """Refuse a command line that asks detectron2's launcher for processes when torchrun has
    started this one already; return this process's place in torchrun's run (None outside one)."""
    process = torchrun_process(environ)
    if process is None:
        return None
    conflicts = []
    if args.num_gpus > 1:
        conflicts.append(f"--num-gpus {args.num_gpus}")
    if args.num_machines > 1:
        conflicts.append(f"--num-machines {args.num_machines}")
    if args.machine_rank != 0:
        conflicts.append(f"--machine-rank {args.machine_rank}")
    if args.dist_url != default_argument_parser().get_default("dist_url"):
        conflicts.append(f"--dist-url {args.dist_url}")
    if conflicts:
        script = sys.argv[0] or "train_net.py"
        raise LaunchError(
            f"torchrun's variables (WORLD_SIZE={process.world_size}, LOCAL_WORLD_SIZE={process.local_world_size}) "
            f"make this process one of a run of {process.world_size} already, and {' '.join(conflicts)} asks "
            "detectron2's launcher to start processes as well. Use one or the other: torchrun --nnodes M "
            f"--nproc_per_node N {script} ... without --num-gpus, --num-machines, --machine-rank and "
            f"--dist-url, or python {script} --num-gpus N [--num-machines M --machine-rank R --dist-url "
            "tcp://HOST:PORT] ... without torchrun."
        )
    return process


def launch(main_func: Callable, args, environ: Mapping[str, str] = os.environ):
    """Run ``main_func(args)`` in every process of the run the command line or torchrun asks for.

    Outside torchrun, detectron2's launcher starts ``args.num_gpus`` processes on this machine (or
    runs ``main_func`` here when the run has one process). Under torchrun this process joins the
    run's process group from the environment (NCCL on the GPU ``LOCAL_RANK``, gloo without CUDA)
    and creates detectron2's per-machine group, as detectron2's launcher does for its processes.
    """
    process = check_launch_arguments(args, environ)
    if process is None:
        return detectron2_launch(
            main_func, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
            dist_url=args.dist_url, args=(args,),
        )
    _join_torchrun_group(process)
    try:
        result = main_func(args)
        # every process leaves together: one that tears down its groups while another still
        # holds connections to it (rank 0 writing its results) can abort the other's gloo
        comm.synchronize()
        return result
    finally:
        dist.destroy_process_group()


def _join_torchrun_group(process: TorchrunProcess) -> None:
    cuda = torch.cuda.is_available()
    if cuda:
        if process.local_rank >= torch.cuda.device_count():
            raise LaunchError(
                f"LOCAL_RANK={process.local_rank}: this process needs a GPU of its own, and it sees "
                f"{torch.cuda.device_count()}: give torchrun --nproc_per_node {torch.cuda.device_count()} "
                "(or fewer), or check CUDA_VISIBLE_DEVICES."
            )
        torch.cuda.set_device(process.local_rank)
    dist.init_process_group(
        backend="nccl" if cuda else "gloo", init_method="env://", rank=process.rank,
        world_size=process.world_size, timeout=DEFAULT_TIMEOUT,
    )
    comm.create_local_process_group(process.local_world_size)
    comm.synchronize()


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity, which containers and SLURM restrict)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def share_cpu_threads(local_world_size: int, environ: Mapping[str, str] = os.environ,
                      cpus: Optional[int] = None) -> Optional[str]:
    """Give this process its share of the machine's CPUs when several processes run on it.

    Each process would otherwise start a thread per CPU, and the processes then compete for every
    core (``configs/tiny.yaml``, 2 processes on 2 cores: 0.04 s an iteration, against 0.9 s with a
    thread per CPU in each). The threads are set
    to ``max(1, cpus // local_world_size)`` unless ``OMP_NUM_THREADS`` is set, which wins. Returns
    the line to log, or None for a lone process (left as it is).
    """
    if local_world_size <= 1:
        return None
    if environ.get("OMP_NUM_THREADS"):
        return (
            f"OMP_NUM_THREADS={environ['OMP_NUM_THREADS']}: torch uses {_threads(torch.get_num_threads())} "
            f"in each of the {local_world_size} processes on this machine"
        )
    cpus = cpus or available_cpus()
    torch.set_num_threads(max(1, cpus // local_world_size))
    return (
        f"{local_world_size} processes on this machine share its {cpus} CPUs: torch uses "
        f"{_threads(torch.get_num_threads())} in each (OMP_NUM_THREADS sets another number)"
    )


def _threads(n: int) -> str:
    return f"{n} thread" if n == 1 else f"{n} threads"
