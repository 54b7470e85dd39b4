# The venv's ipykernel configuration (`make setup` copies it to .venv/etc/ipython/): drop ipykernel's
# "running over TCP without encryption" notice, which every kernel start prints and which is nothing about
# the user's work (`make book` starts a dozen kernels); every other message stays.
import logging


class NotAboutTheUsersWork(logging.Filter):
    def filter(self, record):
        return "running over TCP without encryption" not in record.getMessage()


c.IPKernelApp.logging_config = {"filters": {"tcp_notice": {"()": NotAboutTheUsersWork}},  # noqa: F821 (traitlets' c)
                                "handlers": {"console": {"filters": ["tcp_notice"]}}}
