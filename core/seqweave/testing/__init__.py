"""The plugin contract checks, shipped with seqweave: run them against any plugin.

::

    seqweave check-plugin NAME                  # an installed plugin (entry point) or architecture
    seqweave check-plugin NAME --module my_pkg  # a plugin module on the path, not installed

or from Python::

    from seqweave.testing import run_checks
    results = run_checks(registry.get("mybert"), registry)   # prints one line per check
    assert not any(r.status == "FAIL" for r in results)

Every check is a plain function of an :class:`~seqweave.Architecture`, a role and a
:class:`CheckContext` that raises :class:`AssertionError` (what differs) or
:class:`CheckSkipped` (why it does not apply): no pytest at run time. seqweave's own test
suite parametrises the same :data:`CHECKS` over its registry.
"""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..registry import Architecture, Registry, Role
from .checks import CHECKS, Check, CheckContext, CheckSkipped, reference_model
from .helpers import build_tiny, load_hf_state_dict, pad_id, randomize, source_states, tokens

__all__ = [
    "CHECKS",
    "Check",
    "CheckContext",
    "CheckResult",
    "CheckSkipped",
    "build_tiny",
    "load_hf_state_dict",
    "pad_id",
    "randomize",
    "reference_model",
    "run_check",
    "run_checks",
    "source_states",
    "tokens",
]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``status`` is ``PASS``, ``FAIL`` or ``SKIP``; ``message`` says why."""

    architecture: str
    role: Role
    check: str
    status: str
    message: str = ""

    def line(self) -> str:
        """One line for a terminal: ``PASS  bert  encoder  parity``, with the reason after a colon."""
        text = f"{self.status:<5} {self.architecture:<12} {self.role:<8} {self.check}"
        return f"{text}: {self.message}" if self.message else text


def run_check(
    check: Check, arch: Architecture, role: Role, registry: Registry, *, debug: bool = False
) -> CheckResult:
    """Run one check in a fresh temporary folder; an unexpected exception is a failure too."""
    with tempfile.TemporaryDirectory(prefix="seqweave-check-") as tmp:
        try:
            check(arch, role, CheckContext(registry, Path(tmp)))
        except CheckSkipped as e:
            return CheckResult(arch.name, role, check.name, "SKIP", str(e))
        except Exception as e:  # noqa: BLE001  any failure of the plugin's code is a result, not a crash
            text = str(e).strip().splitlines()
            first = text[0] if text else ""
            if debug:
                first = "\n" + "".join(traceback.format_exception(e))
            kind = "" if isinstance(e, AssertionError) else f"{type(e).__name__}: "
            return CheckResult(arch.name, role, check.name, "FAIL", kind + first)
    return CheckResult(arch.name, role, check.name, "PASS")


def run_checks(
    arch: Architecture,
    registry: Registry,
    *,
    roles: Iterable[Role] | None = None,
    checks: Iterable[Check] = CHECKS,
    echo: Callable[[str], None] | None = print,
    debug: bool = False,
) -> list[CheckResult]:
    """Run every check that applies to ``arch`` in each of its roles; ``echo`` each result's line.

    Args:
        arch: the architecture to check.
        registry: the registry it is in (a composite's other part comes from there).
        roles: the roles to check; all the architecture registers if None.
        checks: the checks to run (default: all of :data:`CHECKS`).
        echo: called with one line per result; None prints nothing.
        debug: put the traceback into a failure's message.

    Returns:
        The results, in order; a ``FAIL`` among them means the plugin breaks the contract.
    """
    results = []
    for role in roles or arch.roles:
        for check in checks:
            if role not in check.roles:
                continue
            result = run_check(check, arch, role, registry, debug=debug)
            results.append(result)
            if echo is not None:
                echo(result.line())
    return results
