"""nox sessions. They run in the current environment (``venv_backend="none"``): torch is a
multi-GB install that a fresh virtualenv per session would download again."""

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The default test suite, as README runs it (slow and gpu tests are skipped; see
    pyproject.toml)."""
    session.run("python", "-m", "pytest", "-n", "2", *session.posargs)


@nox.session(venv_backend="none")
def slow(session: nox.Session) -> None:
    """Only the slow tests (fault injection with many kills, longer training)."""
    session.run("python", "-m", "pytest", "-n", "2", "-m", "slow", *session.posargs)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    session.run("ruff", "check", "icl_cli", "store", "tests", "benchmarks", "scripts", "recipes",
                "noxfile.py")


@nox.session(venv_backend="none")
def bench(session: nox.Session) -> None:
    """Benchmarks against plain PyTorch loops (not part of the tests)."""
    session.run("python", "-m", "benchmarks", *(session.posargs or ["--quick"]))
