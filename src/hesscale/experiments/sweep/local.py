"""Running a sweep's pending runs here: in this process, or N at a time in a process pool."""

from __future__ import annotations

import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from hesscale.experiments.sweep.plan import PlannedRun, parse_command


def _init_worker(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    import torch

    torch.set_num_threads(threads)


def _execute(argv: list[str]) -> tuple[str, str, str | None]:
    """Run one planned command in this process; returns (log path, status, error)."""
    from hesscale.experiments.run import run_and_log

    config, out = parse_command(argv)
    log = run_and_log(config, out, progress=False, command=["hesscale", *argv])
    return out, log["status"], log.get("error")


def _terminate(executor: ProcessPoolExecutor) -> None:
    """Stop the workers now; runs in flight leave no log and run again on resume."""
    terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    for process in list((executor._processes or {}).values()):  # private before 3.14
        process.terminate()


def run_local(pending: list[PlannedRun], jobs: int, threads: int, progress: bool) -> bool:
    """Run ``pending`` here, ``jobs`` at a time. Returns False if stopped early."""
    from tqdm import tqdm

    bar = tqdm(total=len(pending), desc="runs", unit="run", disable=not progress)

    def done(status: str) -> None:
        bar.update()
        bar.set_postfix_str(f"last: {status}")

    try:
        if jobs == 1:
            import torch

            torch.set_num_threads(threads)
            for planned in pending:
                done(_execute(planned.argv)[1])
            return True
        context = multiprocessing.get_context("spawn")
        executor = ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_init_worker, initargs=(threads,)
        )
        try:
            futures = [executor.submit(_execute, planned.argv) for planned in pending]
            for future in as_completed(futures):
                done(future.result()[1])
        except KeyboardInterrupt:
            _terminate(executor)
            raise
        except BrokenProcessPool:
            print(
                "\nA worker process died (killed, e.g. out of memory, or it could not start: a "
                'script that starts a sweep with several jobs needs if __name__ == "__main__":); '
                "run again to resume.",
                file=sys.stderr,
            )
            return False
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        return True
    except KeyboardInterrupt:
        return False
    finally:
        bar.close()
