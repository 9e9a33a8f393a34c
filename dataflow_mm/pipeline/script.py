"""What every pipeline script shares: serving flags, building the serving, and clean exits.

A user error (bad input path, unwritable cache, mismatched keys, model not available) prints
one clear line and exits with code 2: no traceback for problems the user can fix.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Callable
from typing import Any

from dataflow_mm.common.errors import EXIT_INCOMPLETE, RunStoppedError, UserError
from dataflow_mm.common.secrets import scrub
from dataflow_mm.engine import RUNNERS, LocalRunner, Runner
from dataflow_mm.pipeline.held_log import holding_setup_log
from dataflow_mm.pipeline.outcome import EXIT_CODES_HELP, RERUN_HINT, RunOutcomeError
from dataflow_mm.serving.base import VLMServing
from dataflow_mm.serving.factory import create_serving
from dataflow_mm.serving.settings import ServingSettings

EXIT_USER_ERROR = 2
# A write that failed because of the disk, not the program: a run-level problem (one line, exit 2).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})


def add_serving_args(parser: argparse.ArgumentParser, default_model: str) -> None:
    """The flags that choose and tune the VLM backend: one per ``ServingSettings`` field, plus the two that
    decide whether the tiny smoke-test model may stand in (shared by every pipeline script)."""
    group = parser.add_argument_group("model serving")
    ServingSettings.add_flags(group, model_path=default_model)
    parser.set_defaults(shipped_model_path=default_model)
    group.add_argument(
        "--no_tiny_fallback",
        action="store_true",
        help="fail instead of falling back to a tiny smoke-test model when the model is unavailable",
    )
    group.add_argument(
        "--smoke_test",
        action="store_true",
        help="allow the tiny smoke-test fallback also for a --model_path you gave (which otherwise must load)",
    )


def add_runner_args(parser: argparse.ArgumentParser) -> None:
    """The flags that choose where the pipeline runs: in this process (default) or on Ray."""
    group = parser.add_argument_group("runner")
    group.add_argument(
        "--runner",
        choices=RUNNERS,
        default="local",
        help="local: in this process; ray: Ray tasks and actors (pip extra 'ray')",
    )
    group.add_argument(
        "--no_streaming",
        action="store_true",
        help="run the steps one after another instead of streaming chunks from step to step (either runner)",
    )
    group.add_argument(
        "--ray_address",
        default=None,
        help="Ray cluster to join ('auto' after `ray start --head`); default: start a local one",
    )
    group.add_argument(
        "--ray_actors_per_model_operator", type=int, default=1, help="actors (model copies) per model operator"
    )
    group.add_argument(
        "--ray_num_gpus_per_actor",
        type=float,
        default=None,
        help="GPUs per model actor (default: --tensor_parallel_size for the vllm backend, never 0; another local "
        "model, a scorer or the hf backend, a quarter of a GPU on a cluster with GPUs; an API-only operator 0)",
    )
    group.add_argument(
        "--ray_cpu_threads_per_actor",
        type=int,
        default=None,
        help="CPU threads per model actor for image preprocessing (default 4)",
    )
    outcome = parser.add_argument_group("run outcome (see the exit codes below)")
    outcome.add_argument(
        "--max_failed_rows",
        type=int,
        default=None,
        help="exit 4 when a step has more rows failed for good than this (default: no limit)",
    )
    outcome.add_argument(
        "--max_failed_fraction",
        type=float,
        default=None,
        help="exit 4 when more than this share (0..1) of a step's rows failed for good (default: no limit)",
    )
    parser.epilog = EXIT_CODES_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def runner_from_args(args: argparse.Namespace) -> Runner:
    """The runner the flags describe (Ray is imported only when it is chosen)."""
    if args.runner != "ray":
        return LocalRunner(streaming=not args.no_streaming)
    from dataflow_mm.engine.ray_runner import RayRunner

    return RayRunner(
        address=args.ray_address,
        actors_per_model_operator=args.ray_actors_per_model_operator,
        num_gpus_per_actor=args.ray_num_gpus_per_actor,
        cpu_threads_per_actor=args.ray_cpu_threads_per_actor,
        streaming=not args.no_streaming,
    )


def tiny_fallback_allowed(args: argparse.Namespace, flag: str = "model_path", shipped: str | None = None) -> bool:
    """The tiny random-weight fallback stands in only for a shipped default model or with ``--smoke_test``.

    A model the user named (``--model_path /models/Qwen2.5-VL-3B-Instuct``, ``--blip_model ./blip``) that
    cannot be loaded stops the run with the resolver's message: running the job on a random model instead
    would be a silent substitution. ``flag`` is the option naming the model; ``shipped`` its default
    (for ``--model_path``, the script's default model).
    """
    if args.no_tiny_fallback:
        return False
    default = shipped if flag != "model_path" else getattr(args, "shipped_model_path", None)
    return bool(args.smoke_test) or getattr(args, flag) == default


def serving_from_args(args: argparse.Namespace) -> VLMServing:
    """Build the serving the flags describe (lazy: no model is loaded here)."""
    return create_serving(ServingSettings.from_args(args, allow_tiny_fallback=tiny_fallback_allowed(args)))


def run_main(main: Callable[[], Any]) -> None:
    """Run a script's ``main``; user errors (and a full or read-only disk) become one line on stderr
    (scrubbed of registered secrets, as the log is) and exit code 2. Step files appear atomically, so a
    step cut short this way does not look complete. A run that is incomplete (rows pending, or stopped:
    ``RunStoppedError``) exits 3, one with more failed rows than allowed 4 (``pipeline.outcome``), each
    with one line on stderr."""
    try:
        with holding_setup_log():  # set-up lines wait for the run log (or vanish before a user error)
            main()
    except UserError as exc:
        print(f"error: {scrub(str(exc))}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    except RunOutcomeError as exc:
        print(f"error: {scrub(str(exc))}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    except RunStoppedError as exc:
        print(
            f"stopped: {scrub(str(exc))}; the rows not processed stay pending: {RERUN_HINT}",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(EXIT_INCOMPLETE)
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        where = f" ('{exc.filename}')" if exc.filename else ""
        print(f"error: could not write{where}: {exc.strerror or exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("interrupted: re-run the same command to resume from the completed steps", file=sys.stderr)
        sys.exit(130)
