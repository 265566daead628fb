"""The grader's side of a test cell, inside the student's kernel (sent there as text; standard library only).

nbgrader runs the answers and the tests in one Python process, so an answer cell can change what a later test cell
runs: the shell's input path (input and AST transformers, ``run_cell``, custom exception handlers, a silenced
traceback), or the helpers the test calls (a function of ``posttrain``, a module in ``sys.modules``, a builtin, a
method of ``torch.Tensor``). ``ResilientExecute`` (``autograder/execute.py``) runs this file in the fresh kernel
before the first cell, so the guard captures what the tests will call before any student code exists; the key it
signs verdicts with then lives only here (the install cell is kept out of the kernel's history and line cache).

Each test cell is then sent as one call, ``__posttrain_grader__(token, source)``, with a token the kernel has never
seen. ``Guard.run_test``:

1. puts back every captured module table entry, function code and defaults, builtin, class attribute and
   ``sys.modules`` entry that changed (the test fails: its helpers were tampered with) and every name bound by the
   lab's own imports that the test reads (flagged only);
2. runs the test's source itself, with the captured ``compile`` and ``exec``, no trace or profile function and none
   of the shell's hooks, so nothing a student installed in the shell sees or rewrites it;
3. checks again afterwards (a change made while the test ran fails it, as does a trace function set during it);
4. publishes a verdict signed with the key over the token, the hash of the source it ran and the outcome.

The grader scores a test cell only on a verdict that verifies: none (the call was rewritten, skipped or its output
swallowed) fails the test. Changes to the shell itself are reported as flags; they cannot change a verdict.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import hmac
import json
import linecache
import sys
import time
import types

VERDICT_MIME = "application/vnd.posttrain.verdict+json"
ENTRY_POINT = "__posttrain_grader__"
INSTALL_FILENAME = "<posttrain grader>"
# Rebound by the kernel itself on every request (ipykernel's input forwarding, the display hook's last results).
KERNEL_REBOUND_BUILTINS = frozenset({"_", "__", "___", "input", "raw_input", ENTRY_POINT})
SHELL_PIPELINE = ("run_cell", "run_cell_async", "run_ast_nodes", "run_code", "transform_cell", "showtraceback")
MISSING = object()
PACKAGE_HOOKS = frozenset(
    {"import hooks (sys.meta_path)", "path hooks (sys.path_hooks)"}
    | {
        f"{event} callbacks"
        for event in ("pre_execute", "pre_run_cell", "post_execute", "post_run_cell", "shell_initialized")
    }
)
AUDITED_DURING_TESTS = frozenset({"sys.settrace", "sys.setprofile", "sys.addaudithook"})


class Namespace:
    """What one module or class held when captured: every entry, and each function's code and defaults."""

    def __init__(self, label: str, owner: object, skip: frozenset[str] = frozenset(), strict: bool = False) -> None:
        self.label, self.owner, self.skip = label, owner, skip
        self.strict = strict  # every change fails a test (no library patches the course's code or builtins)
        self.is_class = isinstance(owner, type)
        self.entries = {k: v for k, v in vars(owner).items() if k not in skip}
        self.functions = {}
        for value in self.entries.values():
            function = getattr(value, "__func__", value)  # staticmethod / classmethod
            if isinstance(function, types.FunctionType):
                self.functions[id(function)] = (
                    function,
                    function.__code__,
                    function.__defaults__,
                    function.__kwdefaults__,
                )

    def restore(self) -> tuple[list[str], list[str]]:
        """Put back every changed entry (and, for a class, remove added ones). Return the changes that fail a test
        (to the course's own code or builtins, or to anything with a value defined in the notebook) and those that
        are only flagged (a library rebinding another library's function, as ``torch._dynamo`` wraps
        ``torch.manual_seed`` when it is first imported)."""
        failing, flagged = [], []
        current = vars(self.owner)
        for key, value in self.entries.items():
            new = current.get(key, MISSING)
            if new is not value:
                (failing if self.strict or new is MISSING or _from_notebook(new) else flagged).append(
                    f"{self.label}.{key} was rebound or deleted"
                )
                _setattr(self.owner, key, value)
        if self.is_class:
            for key in [k for k in current if k not in self.entries and k not in self.skip]:
                (failing if self.strict or _from_notebook(current[key]) else flagged).append(
                    f"{self.label}.{key} was added"
                )
                _delattr(self.owner, key)
        for function, code, defaults, kwdefaults in self.functions.values():
            if (
                function.__code__ is not code
                or function.__defaults__ is not defaults
                or (function.__kwdefaults__ is not kwdefaults)
            ):
                failing.append(f"the code or defaults of {self.label}.{function.__name__} were replaced")
                function.__code__, function.__defaults__, function.__kwdefaults__ = code, defaults, kwdefaults
        return failing, flagged


class Guard:
    """The captured state of one kernel, and the one entry point test cells are sent through."""

    def __init__(self, key: bytes, plan: dict) -> None:
        self._signer = _hmac_new(key, digestmod="sha256")  # keyed once; the key itself is not kept
        self._exact, self._trees = frozenset(plan["modules"]), tuple(plan["trees"])
        self._shell = get_ipython()  # noqa: F821 - the kernel's builtin
        self._publish = self._shell.display_pub.publish
        self._modules: dict[str, Namespace] = {}
        self._classes: dict[int, Namespace] = {}
        self._audited: list[str] = []
        self._testing = False
        for name in plan["imports"]:
            try:
                __import__(name)
            except Exception:  # a module the kernel cannot import is simply not watched
                pass
        captured = _clock()  # importing is the lab's first cell's work done earlier; capturing is the guard's
        self._watch_new_modules()
        self._builtins = Namespace("builtins", builtins, KERNEL_REBOUND_BUILTINS, strict=True)
        # {name a test cell reads: what the lab's own imports bind to it}
        self._expected = {name: _resolve(*where) for name, where in plan["names"].items()}
        self._shell_state = self._shell_snapshot()
        sys.addaudithook(self._audit)
        self._unreported_seconds = _clock() - captured  # reported with the first verdict

    def _watch_new_modules(self) -> None:
        """Capture every loaded watched module not captured yet, with the classes it defines."""
        for name, module in list(sys.modules.items()):
            if name in self._modules or not isinstance(module, types.ModuleType):
                continue
            if name not in self._exact and not any(name.startswith(tree + ".") or name == tree for tree in self._trees):
                continue
            ours = name.split(".")[0] == "posttrain"
            self._modules[name] = Namespace(name, module, strict=ours)
            for value in vars(module).values():
                if isinstance(value, type) and value.__module__ == name and id(value) not in self._classes:
                    self._classes[id(value)] = Namespace(f"{name}.{value.__name__}", value, strict=ours)

    def _shell_snapshot(self) -> dict[str, object]:
        """What decides how a cell's code reaches Python: the shell's and kernel's methods (by identity) and hooks."""
        shell, kernel = self._shell, getattr(self._shell, "kernel", None)
        state: dict[str, object] = {}
        for owner, label, names in ((shell, "shell", SHELL_PIPELINE), (kernel, "kernel", ("do_execute",))):
            for name in names:
                state[f"{label}.{name}"] = getattr(type(owner), name, None)
                state[f"{label}.{name} (set on the instance)"] = vars(owner).get(name) if owner is not None else None
        state.update(
            {
                "input transformers": list(shell.input_transformers_post),
                "input cleanup transforms": list(shell.input_transformer_manager.cleanup_transforms),
                "input line transforms": list(shell.input_transformer_manager.line_transforms),
                "AST transformers": list(shell.ast_transformers),
                "custom exception handlers": list(shell.custom_exceptions),
                "import hooks (sys.meta_path)": list(sys.meta_path),
                "path hooks (sys.path_hooks)": list(sys.path_hooks),
            }
        )
        for event, callbacks in shell.events.callbacks.items():
            state[f"{event} callbacks"] = list(callbacks)
        return state

    def _shell_changes(self) -> list[str]:
        """Each change to the shell since the last call: a replaced method, or a hook added from the notebook."""
        now, before = self._shell_snapshot(), self._shell_state
        self._shell_state = now
        changes = []
        for what, value in now.items():
            old = before.get(what)
            if isinstance(value, list):
                added = [item for item in value if not any(item is kept for kept in old or [])]
                removed = [item for item in old or [] if not any(item is kept for kept in value)]
                # Packages add their own import hooks and event callbacks (matplotlib's inline backend, autoreload)
                by_packages = what in PACKAGE_HOOKS and not any(_from_notebook(item) for item in added)
                if (added or removed) and not (by_packages and not removed):
                    changes.append(f"the shell's {what} changed")
            elif value is not old:
                changes.append(f"{what} was replaced")
        return changes

    def _audit(self, event: str, args: tuple) -> None:
        """Note an audit hook added at any time, or a trace or profile function set while a test runs."""
        if event == "sys.addaudithook" or (self._testing and event in AUDITED_DURING_TESTS):
            self._audited.append(event)

    def _restore(self) -> tuple[list[str], list[str]]:
        """Put every captured module entry, function, class attribute and builtin back; return what had changed:
        (changes that fail a test, changes that are only flagged)."""
        self._watch_new_modules()
        failing, flagged = [], []
        for name, namespace in self._modules.items():
            if sys.modules.get(name) is not namespace.owner:
                failing.append(f"sys.modules[{name!r}] was replaced")
                sys.modules[name] = namespace.owner
        for namespace in [*self._modules.values(), *self._classes.values(), self._builtins]:
            fails, flags = namespace.restore()
            failing += fails
            flagged += flags
        return failing, flagged

    def _restore_names(self) -> list[str]:
        """Put back the names a test reads that the lab's imports bound and the notebook rebound."""
        namespace, rebound = self._shell.user_ns, []
        for name, expected in self._expected.items():
            if expected is not MISSING and name in namespace and namespace[name] is not expected:
                rebound.append(f"the name {name!r} from the lab's imports was rebound (put back for the test)")
                namespace[name] = expected
        return rebound

    def _take_audited(self) -> list[str]:
        events, self._audited[:] = [f"{event} was called" for event in self._audited], []
        return events

    def run_test(self, token: str, encoded: str) -> None:
        """Run one test cell's source as written, with the captured helpers, and publish its signed verdict."""
        started = _clock()
        source = base64.b64decode(encoded).decode("utf-8")
        failing, flagged = self._restore()
        flagged += self._take_audited() + self._restore_names() + self._shell_changes()
        if sys.gettrace() is not None or sys.getprofile() is not None:
            flagged.append("a trace or profile function was active when the test started (removed for the test)")
        filename = f"<test cell {token[:8]}>"
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        error: BaseException | None = None
        try:
            code = _compile(_transform_cell(source), filename, "exec")
            _settrace(None)
            _setprofile(None)
            self._testing = True
            ran = _clock()
            _exec(code, self._shell.user_ns)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt from a test fail it too
            error = exc
        finally:
            test_seconds = _clock() - ran if self._testing else 0.0
            self._testing = False
            _settrace(None)
            _setprofile(None)
        failing_during, flagged_during = self._restore()
        failing += [f"{change} while the test ran" for change in failing_during + self._take_audited()]
        flagged += [f"{change} while the test ran" for change in flagged_during]
        reason = f"the test raised {type(error).__name__}: {error}" if error is not None else ""
        if failing:
            reason = "the grader's helpers were tampered with: " + "; ".join(failing)
        guard_seconds = round(_clock() - started - test_seconds + self._unreported_seconds, 4)
        self._unreported_seconds = 0.0
        outcome = {"passed": error is None and not failing, "tampered": bool(failing), "reason": reason}
        self._verdict(token, source, outcome, failing + flagged, guard_seconds)
        if error is not None:
            raise error

    def _verdict(self, token: str, source: str, outcome: dict, flags: list[str], seconds: float) -> None:
        """Publish the verdict (``outcome``: passed, tampered, reason) as display data of its own MIME type, signed
        over everything the grader checks."""
        digest = _sha256(source.encode("utf-8")).hexdigest()
        body = {"token": token, "source_sha256": digest, **outcome, "flags": flags}
        body["guard_seconds"] = seconds  # the guard's own time (restoring and checking), not the test's
        mac = self._signer.copy()
        mac.update(_verdict_message(body))
        body["mac"] = mac.hexdigest()
        self._publish(data={VERDICT_MIME: body}, metadata={})


def sign(key: bytes, body: dict) -> str:
    """HMAC-SHA256 of a verdict's fields (all but ``mac``), as the grader recomputes it."""
    return _hmac_new(key, _verdict_message(body), "sha256").hexdigest()


def _verdict_message(body: dict) -> bytes:
    """The bytes a verdict's MAC covers: every field but ``mac``, as canonical JSON."""
    return json.dumps({k: v for k, v in body.items() if k != "mac"}, sort_keys=True).encode("utf-8")


def _resolve(module: str, attribute: str | None) -> object:
    """The object ``import module`` (``attribute`` None) or ``from module import attribute`` binds, if loaded."""
    found = sys.modules.get(module, MISSING)
    if attribute is None or found is MISSING:
        return found
    return getattr(found, attribute, sys.modules.get(f"{module}.{attribute}", MISSING))


def _from_notebook(hook: object) -> bool:
    """Whether a hook (function, method, class or instance) was defined in the notebook rather than a package."""
    hook = getattr(hook, "__func__", hook)
    owner = hook if isinstance(hook, (type, types.FunctionType)) else type(hook)
    return getattr(owner, "__module__", None) in ("__main__", None)


def install(key_hex: str, plan_json: str) -> None:
    """Capture the kernel's state, make ``__posttrain_grader__`` the test cells' entry point, forget the key."""
    guard = Guard(bytes.fromhex(key_hex), json.loads(plan_json))

    def run_test(token: str, encoded: str) -> None:  # the guard is reachable only through this closure
        guard.run_test(token, encoded)

    setattr(builtins, ENTRY_POINT, run_test)
    for name in [n for n, entry in linecache.cache.items() if any(INSTALL_FILENAME in line for line in entry[2])]:
        del linecache.cache[name]


_compile, _exec, _setattr, _delattr = compile, exec, setattr, delattr
_settrace, _setprofile, _sha256, _hmac_new = sys.settrace, sys.setprofile, hashlib.sha256, hmac.new
_clock = time.perf_counter
from IPython.core.inputtransformer2 import TransformerManager  # noqa: E402 - the kernel has IPython

# IPython syntax (magics) in a test cell becomes Python through IPython's default transformers, not the shell's.
_transform_cell = TransformerManager().transform_cell
