"""Race-free looks at other processes for the tests: a child may end (and turn zombie) between two reads."""
import psutil


def cmdline(process):
    """The command line of ``process`` joined by spaces, "" once it has ended (a zombie has none to read)."""
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def alive(process):
    """True while ``process`` runs; a zombie (ended, not yet reaped) counts as ended."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
