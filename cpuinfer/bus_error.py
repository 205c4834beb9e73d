"""A model file truncated while it is mapped: one line on stderr and exit 2, not a silent death.

Reading a page of a memory-mapped file beyond its (new) end raises SIGBUS in
whichever thread touched it, usually a numba worker. A Python handler cannot
help: Python only notes the signal and returns, so the faulting load runs again
(forever), and the mapping cannot be trusted afterwards anyway. The handler
must be native code that writes a message and calls _exit(). Nothing can be
compiled at install time, but numba can: `on_bus_error` is a C-callable numba
function whose body is two libc calls emitted as LLVM IR (write(2) of a
constant message, then _exit(2)), both async-signal-safe, and it is cached like
the kernels. libc's signal() installs it.
"""

from __future__ import annotations

import ctypes
import signal

from llvmlite import ir
from numba import cfunc, types
from numba.core import cgutils
from numba.extending import intrinsic

MESSAGE = (b"error: the model file was truncated or changed while in use (bus error reading its mapping); "
           b"cpuinfer stopped\n")
EXIT_STATUS = 2

_installed = False


@intrinsic
def _write_message_and_exit(typingctx):
    def codegen(context, builder, signature, args):
        module = builder.module
        i8p, i32, i64 = ir.IntType(8).as_pointer(), ir.IntType(32), ir.IntType(64)
        text = cgutils.global_constant(module, "cpuinfer_bus_error_message", cgutils.make_bytearray(MESSAGE))
        write = cgutils.get_or_insert_function(module, ir.FunctionType(i64, [i32, i8p, i64]), "write")
        _exit = cgutils.get_or_insert_function(module, ir.FunctionType(ir.VoidType(), [i32]), "_exit")
        builder.call(write, [ir.Constant(i32, 2), builder.bitcast(text, i8p), ir.Constant(i64, len(MESSAGE))])
        builder.call(_exit, [ir.Constant(i32, EXIT_STATUS)])
        return context.get_dummy_value()

    return types.void(), codegen


@cfunc(types.void(types.int32), cache=True)
def on_bus_error(signum):
    _write_message_and_exit()


def install() -> None:
    """Make SIGBUS print MESSAGE and exit with status 2 (once per process; a no-op without SIGBUS)."""
    global _installed
    if _installed or not hasattr(signal, "SIGBUS"):
        return
    libc = ctypes.CDLL(None)
    libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
    libc.signal.restype = ctypes.c_void_p
    libc.signal(signal.SIGBUS, on_bus_error.address)
    _installed = True
