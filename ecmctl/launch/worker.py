"""`python -m ecmctl.launch.worker TASK_JSON`: one rank of a task, as torchrun starts it."""

import sys

from ecmctl.launch.task import Task


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m ecmctl.launch.worker TASK_JSON")
    from ecmctl.core.quiet import install_warning_filters
    from ecmctl.launch.parent_death import die_with_parent

    die_with_parent()  # a rank never outlives its torchrun agent

    install_warning_filters()
    Task.from_json(args[0]).run()


if __name__ == "__main__":
    main()
